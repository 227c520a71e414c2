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
later change to one of its rows before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
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
    from dualwrite.engine.config import NatsTransport
    from dualwrite.engine.link import Link

log = logging.getLogger("dualwrite.jetstream")

#: a worker is counted live (for fair shares) this long after its last heartbeat (seconds)
_LIVE = 3.0


class PartitionApplier(Applier):
    """The applier, fenced by the lease of the partition whose message it applies."""

    partition_fence: tuple[str, int] | None = None

    def _fence(self, t: Side, conn: Any) -> None:
        if self.partition_fence is not None:
            self.logs[t].fence(conn, *self.partition_fence)

    def _fenced(self) -> tuple[str, int] | None:
        return self.partition_fence


class _Outcome:
    APPLIED, GONE, HELD, RETRY = "applied", "gone", "held", "retry"


class LinkWorker:
    """One link's share of this worker process."""

    def __init__(self, link: Link, cfg: NatsTransport, me: str) -> None:
        self.link = link
        self.cfg = cfg
        self.me = me
        self.names = Names(link.config.link_name, cfg.partitions)
        link.ensure_linked()
        self.applier = PartitionApplier(link, process=me)
        self.lock = threading.Lock()  # one apply at a time: the applier is not thread-safe
        self.leases: dict[int, ApplierLease] = {}
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.leaving: dict[int, asyncio.Event] = {}
        self.js: Any = None

    # -- ownership ----------------------------------------------------------------------------
    def _fair_share(self) -> int:
        live = [p for p in self.link.state.processes(self.names.link)
                if p["role"] == "worker" and p["heartbeat_age"] <= _LIVE]
        return math.ceil(self.names.partitions / max(1, len(live)))

    def _rebalance(self) -> tuple[list[int], list[int]]:
        """(partitions taken, partitions to hand back) now; renews the leases held."""
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
            if p in self.leases:
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
            taken, gone = await asyncio.to_thread(self._rebalance)
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
        self.applier.close()

    # -- one partition ----------------------------------------------------------------------
    async def serve(self, p: int) -> None:
        """Apply partition ``p``'s messages in order until it is handed back."""
        import nats.errors

        leaving = self.leaving[p]
        sub = None
        try:
            while not leaving.is_set():
                if sub is None:
                    try:
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
                    continue
                except Exception as exc:  # a broker restart: fetch again
                    log.debug("fetching partition %d: %s", p, exc)
                    await asyncio.sleep(0.2)
                    continue
                for msg in msgs:
                    await self.handle(p, msg)
        except LeaseLost as exc:
            log.warning("%s; partition %d handed on", exc, p, extra={"event": "lease_lost"})
        finally:
            lease = self.leases.pop(p, None)
            if lease is not None:
                with contextlib.suppress(DualwriteError):
                    await asyncio.to_thread(lease.release)
            self.tasks.pop(p, None)
            self.leaving.pop(p, None)
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

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
        if barrier and not await self.wait_for_barrier(p, barrier, msg):
            return
        fence = (self.names.lease(p), lease.epoch)
        result = await asyncio.to_thread(self.apply, m, fence)
        if result == _Outcome.HELD:
            await msg.nak(delay=1.0)  # its map does not apply now: the partition waits
        elif result == _Outcome.RETRY:
            await msg.nak(delay=0.5)
        else:
            await self.ack(msg)

    async def ack(self, msg: Any) -> None:
        """Acknowledge, confirmed by the broker where it answers; a lost acknowledgement
        only means a redelivery, which is skipped."""
        try:
            await msg.ack_sync(timeout=5)
        except Exception as exc:
            log.debug("acknowledging: %s (the message comes again and is skipped)", exc)

    def apply(self, m: Message, fence: tuple[str, int]) -> str:
        """Apply one transaction (in a worker thread, one at a time)."""
        s = Side(m.side)
        assert m.changes is not None
        with self.lock:
            a = self.applier
            try:
                maps = {n: x for n, x in a.maps().items() if x.state in APPLYING}
                if any(c.map not in maps for c in m.changes):
                    return _Outcome.HELD
                if not a.logs[s].txids_present([m.txid]):
                    return _Outcome.GONE
                a.partition_fence = fence
                a.apply_changes(s, list(m.changes), maps)
            except TransientConnectorError as exc:
                log.warning("applying from %s: %s; retrying", a.env[s], exc,
                            extra={"event": "unreachable", "side": a.env[s.other]})
                return _Outcome.RETRY
            except LeaseLost:
                raise
            except Exception as exc:
                # not a change's fault (each is parked alone): its maps are out of the link,
                # the message waits for them to be resumed
                for name in sorted({c.map for c in m.changes}):
                    a.fail_map(name, f"applying changes from {a.env[s]}", exc, s=s)
                return _Outcome.HELD
            finally:
                a.partition_fence = None
        return _Outcome.APPLIED

    def _gone(self, m: Message) -> bool:
        return not self.applier.logs[Side(m.side)].txids_present([m.txid])

    async def hold_at_marker(self, p: int, m: Message, msg: Any) -> None:
        """Partition ``p`` holds at a marker until its transaction is applied."""
        beat = time.monotonic()
        while not await asyncio.to_thread(self._gone, m):
            if self.leaving[p].is_set() or p not in self.leases:
                return  # handed on: redelivered to the next owner
            if time.monotonic() - beat > self.cfg.ack_wait / 3:
                beat = time.monotonic()
                with contextlib.suppress(Exception):
                    await msg.in_progress()
            await asyncio.sleep(0.01)
        await self.ack(msg)

    async def wait_for_barrier(self, p: int, barrier: dict[int, int], msg: Any) -> bool:
        """Until every partition in ``barrier`` has delivered its marker (all before it is
        applied there); False when ``p`` is handed on meanwhile."""
        beat = time.monotonic()
        waiting = dict(barrier)
        while waiting:
            for q, seq in list(waiting.items()):
                try:
                    info = await self.js.consumer_info(self.names.stream, self.names.durable(q))
                except Exception as exc:  # the broker is away: look again
                    log.debug("barrier: %s", exc)
                    break
                if info.delivered.stream_seq >= seq:
                    del waiting[q]
            if not waiting:
                break
            if self.leaving[p].is_set() or p not in self.leases:
                return False
            if time.monotonic() - beat > self.cfg.ack_wait / 3:
                beat = time.monotonic()
                with contextlib.suppress(Exception):
                    await msg.in_progress()
            await asyncio.sleep(0.005)
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
