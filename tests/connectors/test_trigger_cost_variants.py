"""bench/trigger_cost.py measures parts of PostgreSQL's capture trigger by editing the
installed function's text (without the wake-up, without the column check, without the pinned
settings). These tests hold those edits to the trigger dualwrite generates today, so that a
change to the trigger's text breaks here, in the suite, rather than silently measuring
something else (or stopping the benchmark run)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from dualwrite.connectors.changelog import CaptureSpec
from dualwrite.connectors.postgresql.dialect import PostgresDialect

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import trigger_cost

SPEC = CaptureSpec(map="items", table="items", key=("id",),
                   columns=("id", "name", "qty", "price", "note", "changed_at"),
                   version="v1")


def _definitions() -> dict[str, str]:
    """The insert and update functions as pg_get_functiondef prints them: the SET clauses
    on lines of their own, then the body."""
    dialect = PostgresDialect()
    dialect.home = "public"
    settings = "".join(f"\n SET {k} TO '{v}'" for k, v in dialect.SETTINGS)
    return {name: (f"CREATE OR REPLACE FUNCTION public.{name}()\n RETURNS trigger\n"
                   f" LANGUAGE plpgsql{settings}\n SET search_path TO 'public'\n"
                   f"AS $function${body}$function$\n")
            for name, body in dialect.definitions(SPEC, {}).items() if name[-1] in "iu"}


@pytest.mark.parametrize("op", ["i", "u"])
def test_each_variant_removes_its_part_and_keeps_the_log_row(op: str) -> None:
    text = _definitions()[f"{SPEC.tag}_{op}"]
    assert "INSERT INTO dualwrite_wake" in text and "pg_catalog.pg_attribute" in text

    no_wake = trigger_cost.without_wake(text)
    assert "dualwrite_wake" not in no_wake
    assert "pg_catalog.pg_attribute" in no_wake

    no_check = trigger_cost.without_check(text)
    assert "pg_catalog.pg_attribute" not in no_check
    assert "INSERT INTO dualwrite_wake" in no_check
    # the marker (the other branch of the check) is gone with it
    assert "renamed or dropped" not in no_check

    no_settings = trigger_cost.without_settings(text)
    assert "\n SET " not in no_settings
    assert no_settings.count("INSERT INTO dualwrite_changes") == 2  # row and marker

    alone = trigger_cost.log_row_alone(text)
    for gone in ("dualwrite_wake", "pg_catalog.pg_attribute", "\n SET ", "renamed or dropped"):
        assert gone not in alone
    # what is left is the log row: the capture statement, once
    assert alone.count("INSERT INTO dualwrite_changes") == 1
    assert alone.rstrip().endswith("RETURN NULL; END$function$")


def test_an_edit_whose_part_is_missing_stops_the_benchmark() -> None:
    text = trigger_cost.without_wake(_definitions()[f"{SPEC.tag}_i"])
    with pytest.raises(RuntimeError, match="no longer has the wake-up"):
        trigger_cost.without_wake(text)
