"""How the state store writes values: tagged JSON, so that a key comes back with the Python
types it was read with."""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from dualwrite.model.values import tag, untag


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def _tag(v: Any) -> Any:
    if isinstance(v, Decimal):
        return {"$d": str(v)}
    if isinstance(v, dt.datetime):
        return {"$dt": v.isoformat()}
    if isinstance(v, dt.date):
        return {"$date": v.isoformat()}
    if isinstance(v, dt.time):
        return {"$t": v.isoformat()}
    if isinstance(v, uuid.UUID):
        return {"$u": str(v)}
    if isinstance(v, bytes | memoryview):
        return {"$b": base64.b64encode(bytes(v)).decode()}
    if isinstance(v, float) and v != v:
        return {"$nan": True}
    if isinstance(v, list):
        return [_tag(x) for x in v]
    return tag(v)  # dualwrite's own value types, addresses, durations


def _untag(v: Any) -> Any:
    if isinstance(v, list):
        return [_untag(x) for x in v]
    if isinstance(v, dict) and len(v) == 1:
        (k, x), = v.items()
        if k == "$d":
            return Decimal(x)
        if k == "$dt":
            return dt.datetime.fromisoformat(x)
        if k == "$date":
            return dt.date.fromisoformat(x)
        if k == "$t":
            return dt.time.fromisoformat(x)
        if k == "$u":
            return uuid.UUID(x)
        if k == "$b":
            return base64.b64decode(x)
        if k == "$nan":
            return float("nan")
        return untag(v)
    return v


def encode_values(values: Sequence[Any]) -> str:
    """JSON for a tuple of database values that decodes to the same types."""
    return json.dumps([_tag(v) for v in values], separators=(",", ":"))


def decode_values(text: str) -> tuple[Any, ...]:
    return tuple(_untag(v) for v in json.loads(text))


def _deep_tag(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _deep_tag(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_deep_tag(x) for x in v]
    return _tag(v)


def _deep_untag(v: Any) -> Any:
    if isinstance(v, dict):
        u = _untag(v)
        return u if u is not v else {k: _deep_untag(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_deep_untag(x) for x in v]
    return v


def encode_doc(doc: Any) -> str:
    """JSON for nested data holding database values, decoding to the same types."""
    return json.dumps(_deep_tag(doc), separators=(",", ":"))


def decode_doc(text: str) -> Any:
    return _deep_untag(json.loads(text))


def encode_row(row: dict[str, Any]) -> str:
    return json.dumps({k: _tag(v) for k, v in row.items()}, separators=(",", ":"))


def decode_row(text: str) -> dict[str, Any]:
    return {k: _untag(v) for k, v in json.loads(text).items()}
