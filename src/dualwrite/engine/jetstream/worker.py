"""Workers: apply the messages of the partitions they own, one message at a time each.

Ownership: a partition is owned under a lease of the state store (the applier lease's
table, named ``<link>#p<n>``): its epoch fences every transaction the owner commits (the
fence row ``<link>#p<n>`` in both databases, see CaptureLog.fence), so an owner that was
stopped and lost the partition commits nothing more. Each worker takes free partitions up
to its fair share (partitions / live workers of the link) and hands back those above it
once a new worker is seen: adding or removing a worker rebalances without stopping others.

Applying: a message is applied with the applier's own code (``Applier.apply_changes``):
one target transaction, the applied position written with the rows, the changes deleted
from the source log after commit. A message whose transaction is no longer in the source
log was applied (or settled) already and is skipped: redeliveries and republished copies
take effect once.

Barrier: a transaction touching several partitions is applied in its home partition (the
lowest) once every other partition it touches has delivered its marker, i.e. applied
everything before it; the owners of those partitions hold at the marker until the
transaction is gone from the source log. The target never shows half a transaction, nor a
later change to one of its rows before it. Whether a partition holds at its marker is read
from the broker (its consumer's last delivery), so a holder checks that the broker still
counts its marker as delivered: a broker killed and restarted can read a consumer's state
back older than it was, and the hold would then be invisible to the transaction's home.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from dualwrite.engine.capture import APPLYING, Applier
from dualwrite.engine.jetstream.broker import connect, consumer_config, ensure_stream
from dualwrite.engine.jetstream.partition import (
    BARRIER_HEADER,
    Message,
    Names,
    decode,
    decode_barrier,
)
from dualwrite.engine.lease import ApplierLease
from dualwrite.errors import ConnectorError, DualwriteError, LeaseLost, TransientConnectorError
from dualwrite.model.maps import Side

if TYPE_CHECKING:
    from dualwrite.connectors.base import WriteSession
    from dualwrite.engine.config import NatsTransport
    from dualwrite.engine.link import Link

log = logging.getLogger("dualwrite.jetstream")

#: a worker is counted live (for fair shares) this long after its last heartbeat (seconds)
_LIVE = 3.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PartitionApplier(Applier):
    """The applier, fenced by the leases of the partitions whose messages it applies (in
    name order: two transactions raise shared fences in one order, so never deadlock)."""

    partition_fences: list[tuple[str, int]] = []  # noqa: RUF012 (set per batch)

    def _raise_more_fences(self, sess: WriteSession, t: Side) -> None:
        # a batch holds messages of several partitions: every one of their leases must still
        # be this worker's when the batch commits (the first is raised by finish_apply)
        for name, epoch in self.partition_fences[1:]:
            self.logs[t].fence(sess, name, epoch)

    def _fenced(self) -> tuple[str, int] | None:
        # deleting applied changes from the source log: they are applied and marked, so
        # one partition's fence is enough to keep a stale worker from running it late
        return self.partition_fences[0] if self.partition_fences else None


class _Outcome:
    APPLIED, GONE, HELD, RETRY, LOST = "applied", "gone", "held", "retry", "lost"


#: how long a partition's pulls time out before its worker looks whether the broker still
#: has its consumer, and whether that consumer holds messages it does not deliver (seconds)
_CONSUMER_CHECK = 5.0

#: how often a partition holding at a marker, or waiting at a barrier, looks whether the
#: broker still counts the message it holds as delivered to it (seconds)
_DELIVERY_CHECK = 1.0


class _Forgotten(Exception):
    """The broker no longer counts the message a partition holds as delivered to its
    consumer: it was killed and started again on a store that had not yet written the
    consumer's state (nats-server writes it asynchronously). Nobody else can see that the
    partition holds there, so the partition fetches again on a consumer made anew."""

#: messages applied together in one target transaction at most (group commit: one message
#: per partition is in flight, so a batch holds messages of different partitions)
_BATCH = 64


class LinkWorker:
    """One link's share of this worker process."""

    def __init__(self, link: Link, cfg: NatsTransport, me: str) -> None:
        self.link = link
        self.cfg = cfg
        self.me = me
        self.names = Names(link.config.link_name, cfg.partitions, link.ensure_linked())
        self.applier = PartitionApplier.for_link(link, process=me)
        self.lock = threading.Lock()  # one apply at a time: the applier is not thread-safe
        self.leases: dict[int, ApplierLease] = {}
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.leaving: dict[int, asyncio.Event] = {}
        self.js: Any = None
        #: messages waiting to be applied, with the futures their partitions wait on
        self.queue: list[tuple[Message, tuple[str, int], asyncio.Future[str]]] = []
        self.queued = asyncio.Event()
        self.batcher: asyncio.Task[None] | None = None

    # -- ownership ----------------------------------------------------------------------------
    def _fair_share(self) -> int:
        here = socket.gethostname()
        live = [p for p in self.link.state.processes(self.names.link)
                if p["role"] == "worker" and p["heartbeat_age"] <= _LIVE
                and not (p["host"] == here and not _pid_alive(int(p["pid"])))]
        return math.ceil(self.names.partitions / max(1, len(live)))

    def _rebalance(self, busy: set[int]) -> tuple[list[int], list[int]]:
        """(partitions taken, partitions to hand back) now; renews the leases held. A
        partition in ``busy`` (its task still ending) is not taken again yet."""
        self.link.state.heartbeat(self.me, role="worker",
                                  note=f"partitions {sorted(self.leases)}")
        lost = [p for p, lease in self.leases.items() if not lease.renew()]
        for p in lost:
            del self.leases[p]
        fair = self._fair_share()
        taken = []
        for p in range(self.names.partitions):
            if len(self.leases) >= fair:
                break
            if p in self.leases or p in busy:
                continue
            lease = ApplierLease(self.link.state, self.names.lease(p),
                                 ttl=self.link.config.model.capture.lease_seconds)
            if lease.acquire():
                self.leases[p] = lease
                taken.append(p)
        extra = sorted(self.leases)[fair:] if len(self.leases) > fair else []
        with self.lock:
            self.applier._parked = None  # releases (and parks) by other processes
        return taken, lost + extra

    async def tick(self) -> None:
        try:
            taken, gone = await asyncio.to_thread(self._rebalance, set(self.tasks))
        except (TransientConnectorError, ConnectorError) as exc:
            log.warning("the state store: %s; partitions kept until their leases run out",
                        exc)
            return
        for p in taken:
            log.info("worker takes partition %d of link %r", p, self.names.link,
                     extra={"event": "partition", "partition": p})
            self.leaving[p] = asyncio.Event()
            self.tasks[p] = asyncio.create_task(self.serve(p))
        for p in gone:
            if p in self.leaving:
                self.leaving[p].set()  # after its message in flight

    async def close(self) -> None:
        for ev in self.leaving.values():
            ev.set()
        for t in list(self.tasks.values()):
            with contextlib.suppress(Exception):
                await t
        if self.batcher is not None:
            self.batcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.batcher
        self.applier.close()

    # -- applying, in batches -----------------------------------------------------------------
    async def submit(self, m: Message, fence: tuple[str, int]) -> str:
        """Apply ``m`` (with the next batch); its outcome."""
        if self.batcher is None:
            self.batcher = asyncio.create_task(self.apply_batches())
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.queue.append((m, fence, fut))
        self.queued.set()
        return await fut

    async def apply_batches(self) -> None:
        """Apply what is queued, a batch per target transaction: messages that arrive while
        one batch is applied form the next (group commit)."""
        while True:
            await self.queued.wait()
            self.queued.clear()
            while self.queue:
                batch, self.queue = self.queue[:_BATCH], self.queue[_BATCH:]
                try:
                    results = await asyncio.to_thread(
                        self.apply_batch, [(m, f) for m, f, _fut in batch])
                except BaseException as exc:  # handed to each message's partition
                    for _m, _f, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                for (_m, _f, fut), r in zip(batch, results, strict=True):
                    if not fut.done():
                        fut.set_result(r)

    def apply_batch(self, items: list[tuple[Message, tuple[str, int]]]) -> list[str]:
        """Apply messages of distinct partitions (in a worker thread, one batch at a time):
        per direction one target transaction; when it fails, each message alone (so that
        only the messages at fault are held, and a lost partition loses only its own)."""
        out: list[str] = [_Outcome.RETRY] * len(items)
        with self.lock:
            a = self.applier
            try:
                maps = {n: x for n, x in a.maps().items() if x.state in APPLYING}
                todo: dict[Side, list[int]] = {s: [] for s in Side}
                for i, (m, _f) in enumerate(items):
                    assert m.changes is not None
                    if any(c.map not in maps for c in m.changes):
                        out[i] = _Outcome.HELD
                    else:
                        todo[Side(m.side)].append(i)
                for s, idx in todo.items():
                    if not idx:
                        continue
                    present = a.logs[s].txids_present([items[i][0].txid for i in idx])
                    for i in idx:
                        if items[i][0].txid not in present:
                            out[i] = _Outcome.GONE
                    idx = [i for i in idx if items[i][0].txid in present]
                    if len(idx) > 1:
                        try:
                            self._apply(s, [items[i] for i in idx], maps)
                            for i in idx:
                                out[i] = _Outcome.APPLIED
                            continue
                        except TransientConnectorError as exc:
                            log.warning("applying from %s: %s; retrying", a.env[s], exc,
                                        extra={"event": "unreachable",
                                               "side": a.env[s.other]})
                            continue
                        except Exception as exc:  # each alone: see which is at fault
                            log.debug("a batch failed (%s); applying its messages one by one",
                                      exc)
                    for i in idx:
                        out[i] = self._apply_one(s, items[i], maps)
            except TransientConnectorError as exc:
                log.warning("the state store: %s; retrying", exc)
        return out

    def _apply(self, s: Side, items: list[tuple[Message, tuple[str, int]]],
               maps: dict[str, Any]) -> None:
        a = self.applier
        changes = [c for m, _f in items for c in (m.changes or [])]
        a.partition_fences = sorted({f for _m, f in items})
        try:
            a.apply_changes(s, changes, maps)
        finally:
            a.partition_fences = []

    def _apply_one(self, s: Side, item: tuple[Message, tuple[str, int]],
                   maps: dict[str, Any]) -> str:
        a = self.applier
        m = item[0]
        try:
            self._apply(s, [item], maps)
        except TransientConnectorError as exc:
            log.warning("applying from %s: %s; retrying", a.env[s], exc,
                        extra={"event": "unreachable", "side": a.env[s.other]})
            return _Outcome.RETRY
        except LeaseLost:
            return _Outcome.LOST
        except Exception as exc:
            # not a change's fault (each is parked alone): its maps are out of the link,
            # the message waits for them to be resumed
            for name in sorted({c.map for c in m.changes or []}):
                a.fail_map(name, f"applying changes from {a.env[s]}", exc, s=s)
            return _Outcome.HELD
        return _Outcome.APPLIED

    # -- one partition ----------------------------------------------------------------------
    async def serve(self, p: int) -> None:
        """Apply partition ``p``'s messages in order until it is handed back."""
        import nats.errors

        leaving = self.leaving[p]
        mine = self.leases.get(p)
        sub = None
        quiet_since = time.monotonic()
        try:
            while not leaving.is_set():
                if sub is None:
                    try:
                        await self.fresh_consumer(p)
                        sub = await self.js.pull_subscribe(
                            self.names.subject(p), durable=self.names.durable(p),
                            stream=self.names.stream,
                            config=consumer_config(self.names, self.cfg, p))
                    except Exception as exc:  # the broker is away: try again
                        log.debug("subscribing to partition %d: %s", p, exc)
                        await asyncio.sleep(0.5)
                        continue
                try:
                    msgs = await sub.fetch(1, timeout=0.5)
                except (TimeoutError, nats.errors.TimeoutError):
                    # A pull from a consumer the broker no longer has times out like an idle
                    # one, and so does one from a consumer whose state a restarted broker
                    # read back older than it was (a message counted as delivered to
                    # nobody blocks it until its ack wait ends). Look now and then.
                    if time.monotonic() - quiet_since >= _CONSUMER_CHECK:
                        quiet_since = time.monotonic()
                        stalled = await self.consumer_stalled(p)
                        if stalled:
                            log.info("partition %d: %s; making its consumer anew", p,
                                     stalled, extra={"event": "consumer_lost"})
                            await self._drop(sub)
                            sub = None
                    continue
                except Exception as exc:  # a broker restart: subscribe again
                    log.debug("fetching partition %d: %s", p, exc)
                    await self._drop(sub)
                    sub = None
                    await asyncio.sleep(0.2)
                    continue
                quiet_since = time.monotonic()
                try:
                    for msg in msgs:
                        await self.handle(p, msg)
                except _Forgotten:
                    log.info("partition %d: the broker no longer counts the message held "
                             "as delivered (it was restarted); making its consumer anew", p,
                             extra={"event": "consumer_lost"})
                    await self._drop(sub)
                    sub = None
        except LeaseLost as exc:
            log.warning("%s; partition %d handed on", exc, p, extra={"event": "lease_lost"})
        finally:
            if mine is not None and self.leases.get(p) is mine:
                del self.leases[p]
                with contextlib.suppress(DualwriteError):
                    await asyncio.to_thread(mine.release)
            if self.leaving.get(p) is leaving:
                self.tasks.pop(p, None)
                del self.leaving[p]
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    @staticmethod
    async def _drop(sub: Any) -> None:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()

    async def consumer_stalled(self, p: int) -> str | None:
        """Why partition ``p``'s consumer cannot deliver to its idle owner, or None: the
        broker lost it, or it holds messages yet the pulls time out (asked while nothing of
        the partition is in flight, so a message counted as delivered and unacknowledged
        was delivered to nobody). None when the broker cannot say: the fetch loop waits an
        unreachable broker out."""
        from nats.js.errors import NotFoundError

        try:
            info = await self.js.consumer_info(self.names.stream, self.names.durable(p))
        except NotFoundError:
            return "the broker lost its consumer"
        except Exception:  # the broker is away
            return None
        if info.num_ack_pending or info.num_pending:
            return (f"its consumer holds {info.num_pending} message(s) and counts "
                    f"{info.num_ack_pending} as delivered, yet delivers none")
        return None

    async def forgotten(self, p: int, msg: Any) -> bool:
        """Whether the broker no longer counts ``msg`` (which partition ``p`` holds) as
        delivered to ``p``'s consumer and unacknowledged. One message is in flight per
        partition, so while it is held the consumer's last delivery is that message. False
        when the broker cannot say."""
        from nats.js.errors import NotFoundError

        try:
            info = await self.js.consumer_info(self.names.stream, self.names.durable(p))
        except NotFoundError:
            return True
        except Exception:  # the broker is away: in_progress keeps the message meanwhile
            return False
        held = msg.metadata.sequence.stream
        return not info.num_ack_pending or info.delivered.stream_seq != held

    async def fresh_consumer(self, p: int) -> None:
        """Make the partition's consumer anew as it is taken: a message the previous owner
        had in flight (it died, or handed the partition on while a pull request of its own
        was still out) is delivered again now, not after the ack wait. The stream keeps
        only unacknowledged messages (work-queue retention), so the new consumer starts at
        the partition's oldest message not applied, in order."""
        from nats.js.errors import NotFoundError

        with contextlib.suppress(NotFoundError):
            await self.js.delete_consumer(self.names.stream, self.names.durable(p))
        await self.js.add_consumer(self.names.stream, consumer_config(self.names, self.cfg, p))

    async def handle(self, p: int, msg: Any) -> None:
        try:
            m = decode(msg.data)
        except (ValueError, KeyError, TypeError) as exc:
            log.error("partition %d: a message that is not dualwrite's (%s); dropped", p, exc)
            await msg.term()
            return
        lease = self.leases.get(p)
        if lease is None or lease.epoch is None:
            raise LeaseLost(f"partition {p} of link {self.names.link!r} is no longer this "
                            "worker's", hint="nothing to do: another worker applies it")
        if m.changes is None:
            await self.hold_at_marker(p, m, msg)
            return
        barrier = decode_barrier((msg.headers or {}).get(BARRIER_HEADER))
        if barrier:
            if await asyncio.to_thread(self._gone, m):  # a copy of one applied already
                await self.ack(msg)
                return
            if not await self.wait_for_barrier(p, barrier, m, msg):
                return
        keepalive = asyncio.create_task(self.keep_alive(msg))
        try:
            result = await self.submit(m, (self.names.lease(p), lease.epoch))
        finally:
            keepalive.cancel()
        if result == _Outcome.LOST:
            raise LeaseLost(f"partition {p} of link {self.names.link!r}: another worker "
                            "took it over", hint="nothing to do: that worker applies it")
        if result == _Outcome.GONE:
            log.info("partition %d: transaction %s from %s was applied already (delivered "
                     "again); skipped", p, m.txid, m.side, extra={"event": "duplicate"})
        if result == _Outcome.HELD:
            await msg.nak(delay=1.0)  # its map does not apply now: the partition waits
        elif result == _Outcome.RETRY:
            await msg.nak(delay=0.5)
        else:
            await self.ack(msg)

    async def keep_alive(self, msg: Any) -> None:
        """While a message waits for its batch and is applied: tell the broker it is in
        progress, so that a long transaction is not delivered again meanwhile."""
        while True:
            await asyncio.sleep(self.cfg.ack_wait / 3)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    async def ack(self, msg: Any) -> None:
        """Acknowledge, confirmed by the broker where it answers; a lost acknowledgement
        only means a redelivery, which is skipped."""
        try:
            await msg.ack_sync(timeout=5)
        except Exception as exc:
            log.debug("acknowledging: %s (the message comes again and is skipped)", exc)

    def _gone(self, m: Message) -> bool:
        return not self.applier.logs[Side(m.side)].txids_present([m.txid])

    async def hold_at_marker(self, p: int, m: Message, msg: Any) -> None:
        """Partition ``p`` holds at a marker until its transaction is applied. Raises
        _Forgotten when the broker no longer counts the marker as delivered to ``p``."""
        beat = looked = since = time.monotonic()
        log.debug("partition %d holds at the marker of transaction %s from %s (stream "
                  "sequence %d)", p, m.txid, m.side, msg.metadata.sequence.stream)
        while not await asyncio.to_thread(self._gone, m):
            if self.leaving[p].is_set() or p not in self.leases:
                return  # handed on: redelivered to the next owner
            if time.monotonic() - beat > self.cfg.ack_wait / 3:
                beat = time.monotonic()
                with contextlib.suppress(Exception):
                    await msg.in_progress()
            looked = await self._still_delivered(p, msg, looked)
            await asyncio.sleep(0.01)
        log.debug("partition %d: transaction %s applied after %.2f s at its marker", p, m.txid,
                  time.monotonic() - since)
        await self.ack(msg)

    async def _still_delivered(self, p: int, msg: Any, looked: float) -> float:
        """Every ``_DELIVERY_CHECK`` seconds (since ``looked``): raise _Forgotten when the
        broker no longer counts ``msg`` as delivered to ``p``. Other partitions wait for
        ``p`` to be at its marker by asking the broker (``_at_marker``): a hold the broker
        forgot would hold them, and so ``p``, for ever. When to look next."""
        if time.monotonic() - looked < _DELIVERY_CHECK:
            return looked
        if await self.forgotten(p, msg):
            raise _Forgotten(p)
        return time.monotonic()

    async def _at_marker(self, q: int, seq: int, m: Message) -> bool:
        """Whether partition ``q`` has applied everything before ``m``'s marker there: it
        delivered that marker (``seq``), or it holds at an earlier copy of it (published by
        a reader before the one that took over and published ``m`` again, past the
        broker's duplicate window)."""
        info = await self.js.consumer_info(self.names.stream, self.names.durable(q))
        if info.delivered.stream_seq >= seq:
            return True
        if not info.num_ack_pending:
            return False
        held = await self.js.get_msg(self.names.stream, info.delivered.stream_seq)
        try:
            other = decode(held.data or b"")
        except (ValueError, KeyError, TypeError):
            return False
        return other.changes is None and (other.side, other.txid) == (m.side, m.txid)

    async def wait_for_barrier(self, p: int, barrier: dict[int, int], m: Message,
                               msg: Any) -> bool:
        """Until every partition in ``barrier`` has applied everything before its marker
        (it holds there); False when ``p`` is handed on meanwhile. Raises _Forgotten when
        the broker no longer counts ``msg`` as delivered to ``p``."""
        beat = looked = since = time.monotonic()
        waiting = dict(barrier)
        log.debug("partition %d waits for partitions %s at the markers of transaction %s "
                  "from %s", p, barrier, m.txid, m.side)
        while waiting:
            for q, seq in list(waiting.items()):
                try:
                    if await self._at_marker(q, seq, m):
                        del waiting[q]
                except Exception as exc:  # the broker is away: look again
                    log.debug("barrier: %s", exc)
                    break
            if not waiting:
                break
            if self.leaving[p].is_set() or p not in self.leases:
                return False
            if time.monotonic() - beat > self.cfg.ack_wait / 3:
                beat = time.monotonic()
                with contextlib.suppress(Exception):
                    await msg.in_progress()
            looked = await self._still_delivered(p, msg, looked)
            await asyncio.sleep(0.005)
        log.debug("partition %d: the barrier of transaction %s passed after %.2f s", p, m.txid,
                  time.monotonic() - since)
        return True


def run_worker(links: Sequence[Link], stop: threading.Event, *,
               ready: Callable[[], None] | None = None,
               prepare: Callable[[Link], None] | None = None) -> None:
    """Apply the links' partitions this process owns until ``stop``: messages published by
    their readers (``dualwrite run`` with a NATS transport)."""
    asyncio.run(_run(links, stop, ready, prepare))


async def _run(links: Sequence[Link], stop: threading.Event,
               ready: Callable[[], None] | None,
               prepare: Callable[[Link], None] | None) -> None:
    for link in links:
        if link.config.model.transport.nats is None:
            from dualwrite.errors import ConfigError

            raise ConfigError(f"link {link.config.link_name!r} has no NATS transport",
                              hint="add `transport: {nats: {url: nats://HOST:4222}}` to its "
                              "config, or pass --transport")
    cfg0 = links[0].config.model.transport.nats
    assert cfg0 is not None
    nc = await connect(cfg0, stop)
    if nc is None:
        return
    workers: list[LinkWorker] = []
    try:
        js = nc.jetstream()
        for link in links:
            cfg = link.config.model.transport.nats
            assert cfg is not None
            await asyncio.to_thread(link.bound_maps)
            if prepare is not None:
                await asyncio.to_thread(prepare, link)
            me = await asyncio.to_thread(link.state.register_process,
                                         link.config.link_name, "worker")
            w = LinkWorker(link, cfg, me)
            w.js = js
            while not stop.is_set():
                try:
                    await ensure_stream(js, w.names, cfg)
                    break
                except DualwriteError:
                    raise
                except Exception as exc:  # the broker restarting: wait for it
                    log.debug("the link's stream: %s", exc)
                    await asyncio.sleep(0.5)
            workers.append(w)
        if ready:
            ready()
        while not stop.is_set():
            for w in workers:
                await w.tick()
            await asyncio.to_thread(stop.wait, 1.0)
    finally:
        for w in workers:
            await w.close()
            with contextlib.suppress(DualwriteError):
                w.link.state.unregister_process(w.me)
        await nc.close()
