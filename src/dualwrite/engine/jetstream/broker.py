"""The connection to NATS and the link's stream and consumers (created if missing)."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from dualwrite.engine.config import NatsTransport
from dualwrite.engine.jetstream.partition import Names
from dualwrite.errors import ConfigError

log = logging.getLogger("dualwrite.jetstream")


async def connect(cfg: NatsTransport, stop: threading.Event) -> Any:
    """A connection that reconnects by itself for ever (a broker restart is waited out);
    None when ``stop`` is set before the first connection succeeds."""
    import nats
    from nats.errors import NoServersError

    said = False
    while not stop.is_set():
        try:
            return await nats.connect(cfg.url, max_reconnect_attempts=-1,
                                      reconnect_time_wait=0.25, connect_timeout=2,
                                      allow_reconnect=True, error_cb=_error,
                                      disconnected_cb=_disconnected,
                                      reconnected_cb=_reconnected)
        except (TimeoutError, NoServersError, OSError) as exc:
            if not said:
                log.warning("NATS at %s cannot be reached (%s); retrying", cfg.url, exc,
                            extra={"event": "unreachable", "side": "nats"})
                said = True
            await asyncio.sleep(0.5)
    return None


async def _error(exc: Exception) -> None:
    # the client's own default prints a traceback per failed reconnection attempt
    log.debug("NATS: %s", exc or type(exc).__name__)


async def _disconnected() -> None:
    log.warning("NATS connection lost; reconnecting", extra={"event": "unreachable",
                                                             "side": "nats"})


async def _reconnected() -> None:
    log.info("NATS connection back", extra={"event": "reconnected", "side": "nats"})


def consumer_config(names: Names, cfg: NatsTransport, p: int) -> Any:
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    # one message in flight per partition: the order of a partition is the order applied
    return ConsumerConfig(durable_name=names.durable(p), filter_subject=names.subject(p),
                          ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
                          max_ack_pending=1, ack_wait=cfg.ack_wait, max_deliver=-1)


async def ensure_stream(js: Any, names: Names, cfg: NatsTransport) -> None:
    """The link's stream (work-queue retention: an acknowledged message is gone) and one
    durable consumer per partition."""
    from nats.js.api import RetentionPolicy, StorageType, StreamConfig
    from nats.js.errors import BadRequestError, NotFoundError

    want = StreamConfig(name=names.stream, subjects=[names.subjects],
                        retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE,
                        duplicate_window=cfg.duplicate_window)
    try:
        await js.stream_info(names.stream)
    except NotFoundError:
        try:
            await js.add_stream(want)
        except BadRequestError as exc:
            raise ConfigError(f"JetStream refused the stream {names.stream!r}: {exc}",
                              hint="is JetStream enabled on the server (nats-server -js)?"
                              ) from exc
    for p in range(names.partitions):
        try:
            await js.consumer_info(names.stream, names.durable(p))
        except NotFoundError:
            await js.add_consumer(names.stream, consumer_config(names, cfg, p))
