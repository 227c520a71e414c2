"""Reading the changes of an OData entity set: the decisions, without I/O.

Two methods, chosen per entity set (:func:`choose_method`):

**Delta links.** The first read asks ``Prefer: odata.track-changes``; a service that applies
it says so in ``Preference-Applied`` and ends the read with an ``@odata.deltaLink``. GETting
that link later answers what changed since: changed entities, and removed ones (OData 4.01
JSON: ``"@removed": {"reason": ...}`` with the key properties or an ``@id``; OData 4.0:
``"@odata.context": "...$deletedEntity"`` with ``id``), paged by ``@odata.nextLink``, the
last page carrying the next ``@odata.deltaLink``. :func:`parse_delta_page` reads one page.

**Polling a modified-timestamp property** (CAP's ``managed`` aspect: ``modifiedAt``). Each
poll asks for the rows whose property is at or after the newest value seen so far *less an
overlap window* (clocks of several application servers, and rows committed out of timestamp
order, are late by up to that much); rows already emitted with the same timestamp are
dropped (de-duplication by key and timestamp), and so are dualwrite's own writes (their key
and the timestamp the service gave them, noted by :meth:`ModifiedPoll.expect_echo`: echo
suppression). A deletion leaves no row to poll: a periodic key-only read compared with the
keys known (:func:`deleted_keys`) finds it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from dualwrite.model.values import canonical

if TYPE_CHECKING:
    from dualwrite.connectors.odata.connector import ETags

Row = tuple[Any, ...]
#: decode one JSON value of one property: (property, value) -> Python value
Decoder = Callable[[str, Any], Any]

DEFAULT_OVERLAP = dt.timedelta(seconds=5)


@dataclass(frozen=True)
class RowChange:
    """One changed row of an entity set: ``upsert`` with the row's values as read (by
    property name), or ``delete`` with only its key."""

    op: Literal["upsert", "delete"]
    key: Row
    values: dict[str, Any] | None = None


def _ck(key: Sequence[Any]) -> str:
    """A key as a short stable text (the same in every process: it is kept in the state
    store with the cursor)."""
    return hashlib.blake2b(repr(tuple(canonical(v) for v in key)).encode(),
                           digest_size=12).hexdigest()


@dataclass
class ModifiedPoll:
    """The cursor of polling one entity set by its modified-timestamp property.

    ``since``: the newest timestamp seen (None before the first poll: everything). ``seen``:
    the (key, timestamp) pairs emitted within the overlap window below ``since``, so that
    the window's rows read again are not emitted twice. ``echoes``: (key, timestamp) pairs of
    dualwrite's own writes, dropped when they come back."""

    overlap: dt.timedelta = DEFAULT_OVERLAP
    since: dt.datetime | None = None
    seen: set[tuple[str, dt.datetime]] = field(default_factory=set)
    echoes: set[tuple[str, dt.datetime]] = field(default_factory=set)

    def as_doc(self) -> dict[str, Any]:
        """The cursor as JSON-able data (:meth:`from_doc` reads it back)."""
        return {"since": self.since.isoformat() if self.since else None,
                "seen": sorted([k, m.isoformat()] for k, m in self.seen),
                "echoes": sorted([k, m.isoformat()] for k, m in self.echoes)}

    @classmethod
    def from_doc(cls, doc: dict[str, Any], overlap: dt.timedelta) -> ModifiedPoll:
        def pairs(name: str) -> set[tuple[str, dt.datetime]]:
            return {(str(k), dt.datetime.fromisoformat(m)) for k, m in doc.get(name) or []}

        since = doc.get("since")
        return cls(overlap, dt.datetime.fromisoformat(since) if since else None,
                   pairs("seen"), pairs("echoes"))

    def lower_bound(self) -> dt.datetime | None:
        """The timestamp the next poll asks for rows at or after (``ge``)."""
        return None if self.since is None else self.since - self.overlap

    def expect_echo(self, key: Sequence[Any], modified: dt.datetime) -> None:
        """dualwrite wrote this row, and the service stamped it ``modified``: when a poll
        reads it back unchanged since, it is not a change."""
        self.echoes.add((_ck(key), modified))

    def take(self, rows: Iterable[tuple[Row, dt.datetime | None, dict[str, Any]]]
             ) -> list[RowChange]:
        """The changes among the rows one poll read, (key, timestamp, values) each, in any
        order; advances the cursor. A row without a timestamp (never stamped) is emitted
        once per poll that reads it: a service should stamp every row."""
        out: list[RowChange] = []
        newest = self.since
        for key, modified, values in rows:
            ck = _ck(key)
            if modified is not None:
                if (ck, modified) in self.seen:
                    continue
                self.seen.add((ck, modified))
                if newest is None or modified > newest:
                    newest = modified
                if (ck, modified) in self.echoes:
                    self.echoes.discard((ck, modified))
                    continue
            out.append(RowChange("upsert", tuple(key), values))
        self.since = newest
        if newest is not None:
            floor = newest - self.overlap
            self.seen = {p for p in self.seen if p[1] >= floor}
            # an echo older than the window can no longer come back: forget it
            self.echoes = {p for p in self.echoes if p[1] >= floor}
        return out


def deleted_keys(known: Iterable[Sequence[Any]], present: Iterable[Sequence[Any]]
                 ) -> list[RowChange]:
    """Key-only reconciliation: the rows known to have been in the entity set and read no
    longer, as deletions."""
    now = {_ck(k) for k in present}
    return [RowChange("delete", tuple(k)) for k in known if _ck(k) not in now]


# -- delta links ---------------------------------------------------------------------------


@dataclass
class DeltaPage:
    changes: list[RowChange]
    next_link: str | None
    delta_link: str | None


_KEY_PART = re.compile(r"""\s*(?:(\w+)\s*=\s*)?('(?:[^']|'')*'|[^,']+)\s*(?:,|$)""")


def key_from_id(entity_id: str, key: Sequence[str], edm: dict[str, str]) -> Row:
    """The key values in an entity id such as ``Customers(7)``, ``Orders(company='A',no=5)``
    or a URL ending in one. Raises ValueError when it holds no such key."""
    m = re.search(r"\(([^()]*)\)\s*$", entity_id)
    if not m:
        raise ValueError(f"entity id {entity_id!r} has no key in parentheses")
    parts = [(name, raw) for name, raw in _KEY_PART.findall(m.group(1)) if raw]
    if len(parts) != len(key):
        raise ValueError(f"entity id {entity_id!r} does not hold the {len(key)} key value(s) "
                         f"of ({', '.join(key)})")
    values = dict(parts) if all(n for n, _ in parts) else dict(zip(key, (r for _, r in parts),
                                                                  strict=True))
    out = []
    for k in key:
        raw = values.get(k)
        if raw is None:
            raise ValueError(f"entity id {entity_id!r} does not name key property {k!r}")
        out.append(_parse_literal(raw, edm.get(k, "")))
    return tuple(out)


def _parse_literal(raw: str, edm: str) -> Any:
    raw = raw.strip()
    if raw.startswith("'") and raw.endswith("'"):
        return raw[1:-1].replace("''", "'")
    if edm in ("Edm.Int16", "Edm.Int32", "Edm.Int64", "Edm.Byte", "Edm.SByte"):
        return int(raw)
    return raw  # a GUID, date or number: decoded by the caller's Edm decoder


def parse_delta_page(doc: Any, key: Sequence[str], edm: dict[str, str], decode: Decoder
                     ) -> DeltaPage:
    """One page of a delta response. Raises ValueError when it is not one."""
    if not isinstance(doc, dict) or not isinstance(doc.get("value"), list):
        raise ValueError("a delta response needs a `value` list")
    changes: list[RowChange] = []
    for e in doc["value"]:
        if not isinstance(e, dict):
            raise ValueError(f"a delta entry must be an object, not {e!r}")
        context = str(e.get("@odata.context") or e.get("@context") or "")
        removed = "@removed" in e or "@odata.removed" in e or context.endswith(
            "$deletedEntity")
        if context.endswith(("$link", "$deletedLink")):
            continue  # changes of relationships: the foreign key properties carry them
        if removed:
            if all(k in e for k in key):
                k = tuple(decode(p, e[p]) for p in key)
            else:
                eid = e.get("@id") or e.get("@odata.id") or e.get("id")
                if not isinstance(eid, str):
                    raise ValueError(f"a removed entry has neither its key nor an id: {e!r}")
                k = tuple(decode(p, v) for p, v in zip(key, key_from_id(eid, key, edm),
                                                       strict=True))
            changes.append(RowChange("delete", k))
            continue
        missing = [p for p in key if p not in e]
        if missing:
            raise ValueError(f"a changed entry lacks its key ({', '.join(missing)}): {e!r}")
        values = {p: decode(p, v) for p, v in e.items() if not p.startswith("@") and "@" not in p}
        changes.append(RowChange("upsert", tuple(values[p] for p in key), values))
    next_link = doc.get("@odata.nextLink") or doc.get("@nextLink")
    delta_link = doc.get("@odata.deltaLink") or doc.get("@deltaLink")
    return DeltaPage(changes, next_link, delta_link)


def applies_track_changes(preference_applied: str | None) -> bool:
    """Whether a ``Preference-Applied`` header says change tracking was applied."""
    return bool(preference_applied) and any(
        p.strip().split("=", 1)[0].lower() in ("odata.track-changes", "track-changes")
        for p in str(preference_applied).split(","))


Method = Literal["delta", "poll"]


def choose_method(tracks_changes: bool, modified: str | None, columns: Iterable[str]
                  ) -> tuple[Method | None, str]:
    """How changes of an entity set are read, and why; (None, why neither way is open) when
    they cannot be (what to do is for the caller to say: validate's DW136)."""
    if tracks_changes:
        return "delta", "the service applies odata.track-changes (delta links)"
    cols = set(columns)
    if modified and modified in cols:
        return "poll", f"polling {modified} (the service offers no delta links)"
    if modified:
        return None, ("the service applies no change tracking (odata.track-changes) to the "
                      f"entity set, and it has no property {modified!r} (named in `modified:`)"
                      " to poll")
    return None, ("the service applies no change tracking (odata.track-changes) to the entity "
                  "set, and no modified-timestamp property is named in `modified:` to poll")


@runtime_checkable
class FollowedService(Protocol):
    """What following a service's changes needs of its connector, beside the
    :class:`~dualwrite.connectors.base.Connector` it is (the OData connector implements it;
    :mod:`dualwrite.engine.odata_follow` drives it). Reading is by delta links or by polling
    a modified-timestamp property, as :meth:`Connector.change_method` probed."""

    #: ask the service for each written entity back (its own timestamp: echo suppression)
    return_written: bool
    #: the ETags of rows read, sent as If-Match by the writes that follow (None: If-Match: *)
    etags: ETags | None

    def start_delta(self, table: str, columns: Sequence[str], *, page_size: int = 5000
                    ) -> tuple[list[RowChange], str] | None:
        """Read ``table`` asking for change tracking: its rows and the first delta link, or
        None when the service did not apply the preference."""

    def read_delta(self, table: str, delta_link: str, *, page_size: int = 5000
                   ) -> tuple[list[RowChange], str]:
        """What changed since ``delta_link`` was given, and the next delta link."""

    def newest_modified(self, table: str, modified: str) -> dt.datetime | None:
        """The newest value of the ``modified`` property in ``table`` (None: no rows)."""

    def poll_changes(self, table: str, columns: Sequence[str], modified: str,
                     poll: ModifiedPoll, *, page_size: int = 5000) -> list[RowChange]:
        """The rows changed since ``poll.since`` less the overlap, without those ``poll``
        has emitted already or expects as dualwrite's own echoes."""
