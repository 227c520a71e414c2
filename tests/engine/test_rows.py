"""The compiled map (dualwrite.engine.rows): the row builder every write path calls builds the
same twin whichever path asks (a live write, initial sync's classification, the applier)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualwrite.engine.diff import Entry, MapDiffer
from dualwrite.engine.rows import CompiledMap
from dualwrite.errors import RowError
from dualwrite.model.maps import Side

from conftest import BackendFactory
from sync_fixtures import Pair, erp_customer, make_pair, seed_groups


@pytest.fixture
def pair(make_backend: BackendFactory, tmp_path: Path) -> Pair:
    p = make_pair(make_backend, tmp_path, "sqlite", "sqlite")
    seed_groups(p)
    with p.link() as link:
        link.sync_initial(["groups"])
    return p


def test_a_live_create_builds_the_row_initial_sync_builds(pair: Pair) -> None:
    with pair.link() as link:
        d = link.differ("customers")
        assert isinstance(d, MapDiffer) and isinstance(d, CompiledMap)
        row = d.row_of(Side.LEFT, erp_customer(1))  # usmf, status Invoice, group G10
        key = d.source_key(Side.LEFT, row)
        assert key == ("usmf", "C-0001")
        # the twin's key from the key alone (what a logged change or a state-store key gives)
        assert d.target_key(Side.LEFT, d.row_of_key(Side.LEFT, key)) == \
            d.target_key(Side.LEFT, row) == ("usmf", "C-0001")
        resolved = d.resolve([(Side.LEFT, row), (Side.RIGHT, None)])
        values = d.create_values(Side.RIGHT, row, resolved)
        got = dict(zip(d.insert_columns[Side.RIGHT], values, strict=True))
        assert got["company"] == "usmf" and got["accountnumber"] == "C-0001"
        assert got["onhold"] == 1 and got["typecode"] == 3  # value map, default
        assert got["groupref"] == pair.group_ids()["G10"]  # lookup, within the company
        # initial sync classifies the same row into the same create
        [create] = d.classify([Entry(key, row, None)]).creates[Side.RIGHT]
        assert create.values == values
        # a live change writes the same values into the live columns
        live = d.live_values(Side.RIGHT, row, resolved)
        assert dict(zip(d.live_columns[Side.RIGHT], live, strict=True)) == \
            {c: got[c] for c in d.live_columns[Side.RIGHT]}


def test_live_current_reads_what_live_values_are_compared_with(pair: Pair) -> None:
    with pair.link() as link:
        d = link.differ("customers")
        row = d.row_of(Side.LEFT, erp_customer(2))
        resolved = d.resolve([(Side.LEFT, row)])
        twin = dict(zip(d.insert_columns[Side.RIGHT],
                        d.create_values(Side.RIGHT, row, resolved), strict=True))
        target = d.row_of(Side.RIGHT, twin)
        assert d.live_current(Side.RIGHT, target) == d.live_values(Side.RIGHT, row, resolved)


def test_a_value_the_map_cannot_build_names_its_row_and_field(pair: Pair) -> None:
    with pair.link() as link:
        d = link.differ("customers")
        row = d.row_of(Side.LEFT, erp_customer(3, STATUS="Unknown"))
        resolved = d.resolve([(Side.LEFT, row)])
        with pytest.raises(RowError, match="value map") as got:
            d.create_values(Side.RIGHT, row, resolved)
        assert got.value.field == "STATUS" and got.value.value == "Unknown"
        assert tuple(got.value.key or ()) == d.source_key(Side.LEFT, row)


def test_keys_from_left_give_both_keys_as_the_row_gives_them(pair: Pair) -> None:
    with pair.link() as link:
        d = link.differ("customers")
        row = d.row_of(Side.LEFT, erp_customer(4))
        lkey = d.source_key(Side.LEFT, row)
        # a state-store key comes back as JSON gave it: a list
        assert d.keys_from_left(list(lkey)) == {
            Side.LEFT: lkey, Side.RIGHT: d.target_key(Side.LEFT, row)}


def test_locked_current_splits_a_locked_row_into_its_key_and_live_values(pair: Pair) -> None:
    with pair.link() as link:
        d = link.differ("customers")
        row = d.row_of(Side.LEFT, erp_customer(5))
        resolved = d.resolve([(Side.LEFT, row)])
        twin = dict(zip(d.insert_columns[Side.RIGHT],
                        d.create_values(Side.RIGHT, row, resolved), strict=True))
        locked = tuple(twin.get(c) for c in d.lock_columns[Side.RIGHT])
        key, live = d.locked_current(Side.RIGHT, locked)
        assert key == d.target_key(Side.LEFT, row)
        assert live == d.live_values(Side.RIGHT, row, resolved)


def test_the_decoder_reads_a_logged_version_into_the_row_the_builders_read(pair: Pair
                                                                           ) -> None:
    with pair.link() as link:
        d = link.differ("customers")
        values = erp_customer(6)
        logged = {c: (str(v) if v is not None and not isinstance(v, int | str) else v)
                  for c, v in values.items()}  # JSON carries decimals and times as text
        assert d.decoder(Side.LEFT)(logged) == d.row_of(Side.LEFT, values)
        assert d.decoder(Side.LEFT) is d.decoder(Side.LEFT)  # built once
        keyfix, target_kinds = d.key_decoders(Side.LEFT)
        assert keyfix == [] and target_kinds is None  # text keys: nothing to decode


def test_terms_put_the_other_sides_row_in_the_base_sides_terms(pair: Pair) -> None:
    with pair.link() as link:
        d = link.differ("customers")
        row = d.row_of(Side.LEFT, erp_customer(7))
        resolved = d.resolve([(Side.LEFT, row)])
        twin = d.row_of(Side.RIGHT, dict(zip(
            d.insert_columns[Side.RIGHT], d.create_values(Side.RIGHT, row, resolved),
            strict=True)))
        resolved = d.resolve([(Side.LEFT, row), (Side.RIGHT, twin)])
        as_left = d.terms(Side.LEFT, d.source_key(Side.LEFT, row), resolved)
        mine, theirs = as_left.fields(row, Side.LEFT), as_left.fields(twin, Side.RIGHT)
        assert mine is not None and theirs is not None
        # every field that flows into the left side reads the same from either row
        assert theirs == {i: mine[i] for i in theirs}
        assert as_left.row(mine, row) == row
        assert as_left.fields(None, Side.RIGHT) is None and as_left.row(None, row) is None
