"""The reader: publishes each committed source transaction of a link as one message.

It runs as the holder of the link's applier lease (``run_applier(runner=publish_changes)``:
the same standby and failover as the in-process applier), so one reader per link is
active. It does not delete anything from the change logs: a change stays in its log until
a worker has applied it (the worker deletes it, in the applier's own way), so that conflict
detection, which looks at the target's queued changes, sees the same queue as in-process.
Which transactions are published already is kept in memory; a reader that takes over
publishes again what is still in the logs, and the broker drops the copies it has seen
within the stream's duplicate window (``Nats-Msg-Id``); a worker skips any later copy. A
transaction still in its log long after it was published (ten ack waits) is published
again: a broker that lost a message (its store lost, or purged) cannot stop a partition.
A transaction whose markers are in the stream without it goes before anything else, so that
no later transaction's barrier waits on a partition its marker holds: one a stopped reader
left (:meth:`_Reader.finish_left_transactions`, at start) and one whose publication failed
part way (:meth:`_Reader.finish_unfinished`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dualwrite.connectors.capture import WATERMARK, Change
from dualwrite.engine.capture import APPLYING, Applier
from dualwrite.engine.jetstream.broker import connect, ensure_stream
from dualwrite.engine.jetstream.partition import (
    BARRIER_HEADER,
    Message,
    Names,
    decode,
    encode_barrier,
    encode_marker,
    encode_transaction,
    partitions_of,
)
from dualwrite.errors import ConfigError, TransientConnectorError
from dualwrite.model.maps import Side

if TYPE_CHECKING:
    from dualwrite.engine.config import NatsTransport
    from dualwrite.engine.link import Link

log = logging.getLogger("dualwrite.jetstream")

#: log rows looked at per query while scanning a log for transactions not published yet
_SCAN_PAGE = 20_000
#: seconds between looks at the whole of a log (else only past the last change seen)
_FULL_SCAN_EVERY = 1.0


def publish_changes(link: Link, applier: Applier, stop: threading.Event,
                    ready: Callable[[], None] | None) -> None:
    """The reader's work while it holds ``link``'s lease: until ``stop``, publish each new
    transaction of both logs, and keep the link's housekeeping (lease, heartbeat, settling
    released inbox entries, queue alerts) through ``applier`` (the link's). Raises LeaseLost
    when the lease is lost. ``run_applier`` takes it bound to its link
    (``functools.partial(publish_changes, link)``)."""
    cfg = link.config.model.transport.nats
    assert cfg is not None
    for s in Side:
        if not applier.logs[s].has_txid:
            raise ConfigError(
                f"the JetStream transport needs transaction ids in both change logs; "
                f"{applier.env[s]}'s has none (a SQLite database)", hint="remove `transport:` "
                "from the config (the in-process applier), or use PostgreSQL or MariaDB")
    asyncio.run(_Reader(applier, cfg, stop, link.config.link_name,
                        link.ensure_linked()).run(ready))


class _Reader:
    def __init__(self, applier: Applier, cfg: NatsTransport, stop: threading.Event,
                 link_name: str, link_id: str) -> None:
        self.applier = applier
        self.cfg = cfg
        self.stop = stop
        self.names = Names(link_name, cfg.partitions, link_id)
        #: per side: txids published by this reader and still in the log, with when
        self.published: dict[Side, dict[str, float]] = {s: {} for s in Side}
        #: a transaction still in its log this long after it was published is published
        #: again (a message the broker lost: a copy is skipped if the first one arrives)
        self.republish_after = max(10 * cfg.ack_wait, 10.0)
        self.last_seq: dict[Side, int] = {s: -1 for s in Side}
        self.full_at: dict[Side, float] = {s: 0.0 for s in Side}
        self.js: Any = None
        self.down: str | None = None
        #: a transaction whose publication failed part way (side, txid, changes): published
        #: before anything else (see :meth:`publish_side`)
        self.unfinished: tuple[Side, str, list[Change]] | None = None

    async def run(self, ready: Callable[[], None] | None) -> None:
        nc = await connect(self.cfg, self.stop)
        if nc is None:
            return
        try:
            self.js = nc.jetstream()
            await ensure_stream(self.js, self.names, self.cfg)
            await self.finish_left_transactions()
            # what a stopped applier (or worker) applied but did not delete from the log
            await asyncio.to_thread(self.applier.prune_markers)
            if ready:
                ready()
            log.info("publishing link %r to JetStream stream %s (%d partitions)",
                     self.names.link, self.names.stream, self.names.partitions,
                     extra={"event": "publishing"})
            last_housekeeping = 0.0
            idle = 0
            while not self.stop.is_set():
                found = 0
                for s in Side:
                    found += await self.publish_side(s)
                    if self.down is not None:
                        break  # the broker is away: keep the lease renewed meanwhile
                now = time.monotonic()
                if now - last_housekeeping > 1.0:
                    last_housekeeping = now
                    try:
                        await asyncio.to_thread(self.applier.housekeeping)
                    except TransientConnectorError as exc:
                        log.warning("housekeeping: %s", exc)
                idle = 0 if found else idle + 1
                if not found:
                    await asyncio.to_thread(self.applier._wait, self.stop, idle)
        finally:
            await nc.close()

    async def finish_left_transactions(self) -> None:
        """Publish, first of all, the transactions whose markers a stopped reader published
        without the transaction itself.

        A reader publishes a transaction's markers, then the transaction; one stopped in
        between (killed, or its lease lost) leaves markers that hold their partitions until
        the transaction is applied. Published again in this reader's own order, behind
        later transactions in its home partition, the transaction waited behind one whose
        barrier needed a held partition to move on: each waited for the other for ever (seen
        in CI: nothing applied after a reader was killed). Such a marker is the last message
        of its partition (its reader published nothing after it), so the last message of
        each partition tells: a marker whose transaction is not the last message of any
        partition, and is still in its log, is published now, with the markers it still
        lacks and a barrier naming the ones already there. A transaction that was published
        whole after all is published once more: a copy, skipped once the first is applied.
        Where the broker cannot say, nothing is done here (its partitions are retried by the
        republishing of transactions still in their logs)."""
        from nats.js.errors import NotFoundError

        last: dict[int, tuple[int, Message]] = {}
        try:
            for q in range(self.names.partitions):
                try:
                    raw = await self.js.get_last_msg(self.names.stream, self.names.subject(q))
                except NotFoundError:
                    continue
                try:
                    last[q] = (int(raw.seq), decode(raw.data or b""))
                except (ValueError, KeyError, TypeError):
                    continue  # not dualwrite's: the worker drops it
        except Exception as exc:  # the broker is away
            log.debug("looking for markers left without their transaction: %s", exc)
            return
        whole = {(m.side, m.txid) for _seq, m in last.values() if m.changes is not None}
        left: dict[tuple[str, str], dict[int, int]] = {}
        for q, (seq, m) in last.items():
            if m.changes is None and (m.side, m.txid) not in whole:
                left.setdefault((m.side, m.txid), {})[q] = seq
        maps = [n for n, x in self.applier.maps().items() if x.state in APPLYING]
        # in the order their readers published them
        for (side, txid), markers in sorted(left.items(), key=lambda kv: min(kv[1].values())):
            s = Side(side)
            changes = await asyncio.to_thread(self.applier.logs[s].read_transactions, maps,
                                              [txid])
            if not changes:
                continue  # applied meanwhile: its markers go as soon as it is gone
            log.info("transaction %s of %s: its markers were published without it (a reader "
                     "stopped in between); publishing it first", txid, self.applier.env[s],
                     extra={"event": "republish"})
            if not await self.publish(s, txid, changes, markers):
                return  # the broker is away: republished with the rest later

    async def publish_side(self, s: Side) -> int:
        """Publish the transactions of side ``s``'s log not published yet (oldest commit
        first); how many were published. A transaction whose publication failed part way
        goes first, whichever side it is from (see :meth:`finish_unfinished`)."""
        if not await self.finish_unfinished():
            return 0
        applier = self.applier
        logs = applier.logs[s]
        maps = [n for n, m in applier.maps().items() if m.state in APPLYING]
        if not maps:
            return 0
        # Past the last change seen, as a rule; the whole log once a second: a transaction
        # that commits after later-numbered ones were read (its changes numbered before
        # theirs) is found by that full look (it committed after them: it follows them).
        full = time.monotonic() - self.full_at[s] > _FULL_SCAN_EVERY
        try:
            seen: dict[str, int] = {}
            after = -1 if full else self.last_seq[s]
            while True:
                page = await asyncio.to_thread(logs.transactions, maps, after, _SCAN_PAGE)
                for seq, txid in page:
                    seen[txid] = seq  # the last change of each transaction
                if len(page) < _SCAN_PAGE:
                    break
                after = page[-1][0]
            if seen:
                self.last_seq[s] = max(self.last_seq[s], max(seen.values()))
            published = self.published[s]
            if full:
                self.full_at[s] = time.monotonic()
                for t in published.keys() - seen.keys():  # gone from the log: applied
                    del published[t]
                old = time.monotonic() - self.republish_after
                stale = [t for t, at in published.items() if at < old]
                if stale:
                    log.warning("%d transaction(s) of %s still in the log %.0f s after they "
                                "were published: publishing them again", len(stale),
                                applier.env[s], self.republish_after,
                                extra={"event": "republish"})
                    for t in stale:
                        del published[t]
            new = [t for t in seen if t not in published and t != WATERMARK]
            if not new:
                return 0
            changes = await asyncio.to_thread(logs.read_transactions, maps, new)
        except TransientConnectorError as exc:
            log.warning("reading the change log of %s: %s", applier.env[s], exc)
            return 0
        by_tx: dict[str, list[Change]] = {}
        for c in changes:
            by_tx.setdefault(c.txid, []).append(c)
        # commit order: a transaction that wrote after another committed ends later
        done = 0
        for txid in sorted(by_tx, key=lambda t: by_tx[t][-1].seq):
            if not await self.publish(s, txid, by_tx[txid]):
                break  # the broker is away: the rest waits, in order
            published[txid] = time.monotonic()
            done += 1
        return done

    async def finish_unfinished(self) -> bool:
        """Publish again the transaction whose publication failed part way (the broker went
        away after some of its markers); whether nothing is left unfinished. It goes before
        anything else: its markers hold their partitions until it is applied, and the other
        side's transactions published first put it behind one whose barrier needed a held
        partition, each waiting for the other for ever (seen in CI after a broker restart)."""
        if self.unfinished is None:
            return True
        s, txid, changes = self.unfinished
        if not await self.publish(s, txid, changes):
            return False
        self.unfinished = None
        self.published[s][txid] = time.monotonic()
        return True

    async def publish(self, s: Side, txid: str, changes: list[Change],
                      in_stream: dict[int, int] | None = None) -> bool:
        """Markers in the partitions the transaction touches besides its home, then the
        transaction in its home, naming the markers' positions (its barrier). ``in_stream``:
        markers in the stream already (partition: position), not published again."""
        direction = self.applier._direction[s]
        parts = partitions_of(changes, self.names.partitions)
        home = parts[0]
        try:
            markers = {q: seq for q, seq in (in_stream or {}).items() if q in parts[1:]}
            for q in parts[1:]:
                if q in markers:
                    continue
                ack = await self.js.publish(
                    self.names.subject(q), encode_marker(s.value, txid, home), timeout=2,
                    headers={"Nats-Msg-Id": self.names.msg_id(direction, txid, q)})
                markers[q] = ack.seq
            headers = {"Nats-Msg-Id": self.names.msg_id(direction, txid)}
            if markers:
                headers[BARRIER_HEADER] = encode_barrier(markers)
            await self.js.publish(self.names.subject(home),
                                  encode_transaction(s.value, txid, changes, parts),
                                  timeout=2, headers=headers)
        except Exception as exc:  # any failure of the broker: published again, first
            self.unfinished = (s, txid, changes)
            if self.down is None:
                log.warning("publishing to NATS: %s; retrying", exc or type(exc).__name__,
                            extra={"event": "unreachable", "side": "nats"})
            self.down = str(exc)
            await asyncio.sleep(0.2)
            return False
        if self.down is not None:
            log.info("NATS reachable again; publishing", extra={"event": "reconnected",
                                                               "side": "nats"})
            self.down = None
        return True
