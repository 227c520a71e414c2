"""Values as people read them: what errors show, plan and verify print."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from dualwrite.model.values import readable, shown


def test_values_read_as_written_not_as_python_reprs() -> None:
    assert readable(Decimal("9.99")) == "9.99" and shown(Decimal("9.99")) == "9.99"
    assert shown(Decimal("1E+3")) == "1000"  # plain, never scientific
    assert shown(dt.datetime(2021, 3, 4, 5, 6, 7)) == "2021-03-04T05:06:07"
    assert shown(dt.date(2024, 2, 29)) == "2024-02-29"
    assert shown(b"\x01\xff") == "01ff"
    assert shown("Customer 5") == '"Customer 5"' and shown("") == '""'
    assert shown(None) == "null" and shown(True) == "true" and shown(42) == "42"
    assert readable(None) is None and readable(7) == 7
