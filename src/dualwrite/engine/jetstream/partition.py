"""Pure parts of the JetStream transport: names, partitions, and the messages' encoding.

No I/O here: the reader and the worker (:mod:`.reader`, :mod:`.worker`) drive these.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from dualwrite.connectors.capture import Change

#: the message format's version (a worker refuses one it does not know)
FORMAT = 1
#: header of a transaction's message: the barrier partitions and their markers' stream seqs
BARRIER_HEADER = "Dw-Barrier"


@dataclass(frozen=True)
class Names:
    """The JetStream names of one link: its stream, and per partition a subject and a
    durable consumer. Link names may hold any character; the broker's names are derived
    from a hash of the name and the link's id (two links given one name, in two state
    stores, still get a stream each), plus the name's safe characters for people reading
    `nats stream ls`."""

    link: str
    partitions: int
    #: the link's id (recorded in both environments, see Link.ensure_linked)
    link_id: str = ""

    @property
    def tag(self) -> str:
        safe = re.sub(r"[^A-Za-z0-9_-]", "_", self.link)[:32]
        digest = hashlib.sha1(f"{self.link}\0{self.link_id}".encode()).hexdigest()[:8]
        return f"{safe}_{digest}"

    @property
    def stream(self) -> str:
        return f"dualwrite_{self.tag}"

    def subject(self, p: int) -> str:
        return f"dualwrite.{self.tag}.p{p}"

    @property
    def subjects(self) -> str:
        return f"dualwrite.{self.tag}.>"

    def durable(self, p: int) -> str:
        return f"p{p}"

    def lease(self, p: int) -> str:
        """The partition's lease (state store) and fence (both databases) name."""
        return f"{self.link}#p{p}"

    def msg_id(self, direction: str, txid: str, marker: int | None = None) -> str:
        """``Nats-Msg-Id``: link, direction and source transaction (the commit position the
        log names); a marker adds the partition it stops."""
        base = f"{self.link}|{direction}|{txid}"
        return base if marker is None else f"{base}|barrier{marker}"


def _norm(v: Any) -> Any:
    """A key value as both sides' logs agree on it: numbers by value (5, 5.0 and "5" from
    a decimal column hash alike), text as text."""
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, int | float | Decimal):
        try:
            d = Decimal(str(v))
        except InvalidOperation:
            return f"n:{v}"
        if d.is_finite():
            d = d.normalize()
            return "n:" + (format(d, "f") if d != 0 else "0")
        return f"n:{v}"
    return f"s:{v}"


def partition_of(map_name: str, key: Sequence[Any], partitions: int) -> int:
    """The partition of a row of a map: a hash of the map's name and its key values, the
    same from either side (a row's changes from both directions meet in one partition and
    are applied one after the other, as the in-process applier does)."""
    text = json.dumps([map_name, [_norm(v) for v in key]], separators=(",", ":"),
                      default=str)
    return zlib.crc32(text.encode()) % partitions


def partitions_of(changes: Sequence[Change], partitions: int) -> list[int]:
    """The partitions a transaction touches, lowest first (the lowest is its home: where
    it is applied; the others stop at a marker until it is)."""
    return sorted({partition_of(c.map, c.key, partitions) for c in changes})


def _text(c: Change, which: str) -> str | None:
    raw = c.old_json if which == "old" else c.new_json
    if raw is not None:
        return str(raw)
    value = c.old if which == "old" else (c.new if c.op != "X" else {"reason": c.reason})
    return None if value is None else json.dumps(value, default=str)


def encode_transaction(side: str, txid: str, changes: Sequence[Change],
                       parts: Sequence[int]) -> bytes:
    """One source transaction as one message: its changes with their values as the log's
    JSON text (the applier's set-based paths hand that text to the target as it is)."""
    return json.dumps({
        "f": FORMAT, "side": side, "txid": txid, "parts": list(parts),
        "changes": [[c.seq, c.map, c.txid, c.op, c.key_text, _text(c, "old"), _text(c, "new"),
                     c.at.isoformat(), c.version] for c in changes]},
        separators=(",", ":")).encode()


def encode_marker(side: str, txid: str, home: int) -> bytes:
    """The barrier marker of a transaction, in a partition it touches besides its home."""
    return json.dumps({"f": FORMAT, "side": side, "txid": txid, "marker": home},
                      separators=(",", ":")).encode()


@dataclass
class Message:
    side: str
    txid: str
    #: None for a marker
    changes: list[Change] | None
    #: a marker: the home partition of its transaction
    home: int | None = None


def decode(data: bytes) -> Message:
    """A message of :func:`encode_transaction` or :func:`encode_marker`; ValueError for
    what is neither."""
    doc = json.loads(data)
    if not isinstance(doc, dict) or doc.get("f") != FORMAT:
        raise ValueError(f"not a dualwrite message of format {FORMAT}: {data[:80]!r}")
    if "marker" in doc:
        return Message(str(doc["side"]), str(doc["txid"]), None, int(doc["marker"]))
    out = []
    for seq, name, txid, op, key_text, old, new, at, version in doc["changes"]:
        c = Change(int(seq), str(name), str(txid), str(op), str(key_text),
                   at=dt.datetime.fromisoformat(at), old_json=old, new_json=new)
        c.version = str(version or "")
        out.append(c)
    return Message(str(doc["side"]), str(doc["txid"]), out)


def encode_barrier(markers: dict[int, int]) -> str:
    """partition -> stream seq of the marker there, as a header value."""
    return ",".join(f"{p}:{seq}" for p, seq in sorted(markers.items()))


def decode_barrier(text: str | None) -> dict[int, int]:
    if not text:
        return {}
    out = {}
    for item in text.split(","):
        p, _, seq = item.partition(":")
        out[int(p)] = int(seq)
    return out
