"""How the state store writes values: tagged JSON, so that a key comes back with the Python
types it was read with. The tags themselves are :func:`dualwrite.model.codec.tag_value`'s (one
definition of every value's JSON form); this module writes and reads the documents."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

from dualwrite.model.codec import tag_value as _tag
from dualwrite.model.codec import untag_value as _untag


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


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
