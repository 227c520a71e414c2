"""Alert rules: N events of a kind within W minutes on a map → pause, stop, log or webhook.

Events are recorded in the state store (so that ``dualwrite status`` and every process see
them); a rule fires when its count is reached within its window, counting only events after
its previous firing, so a steady stream of errors fires it once per ``count`` events. The
decision is the state store's, one process at a time per map
(:meth:`~dualwrite.engine.state.StateStore.fire_alert`): processes recording events of one
map at once fire a rule once, not once each.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import TYPE_CHECKING

from dualwrite.engine.config import AlertRule

if TYPE_CHECKING:
    from dualwrite.engine.link import Link

log = logging.getLogger("dualwrite.alerts")

#: the share of a queue budget at which an alert is raised
QUEUE_ALERT_LEVEL = 0.8


def _describe(map_name: str, kind: str, window: str, message: str, n: int) -> str:
    """An alert's message: ``n`` events of ``kind`` counted within ``window``."""
    return f"map {map_name}: {n} {kind} event(s) within {window} (last: {message})"


class Alerts:
    def __init__(self, link: Link, rules: list[AlertRule]) -> None:
        self.link = link
        self.rules = rules
        self._levels: dict[str, float] = {}
        self._lock = threading.Lock()

    def record(self, map_name: str, kind: str, message: str, *,
               defer: Callable[[Callable[[], None]], None] | None = None) -> list[str]:
        """Record an event; run the actions of every rule it makes fire, or hand each to
        ``defer`` to be run later (the applier runs them after its step: an action that
        pauses or stops a map changes the maps the apply loop works on). Returns them."""
        now = time.time()
        state = self.link.state
        state.add_event(map_name, kind, message, now)
        fired = []
        for rule in self.rules:
            if rule.map and rule.map != map_name:
                continue
            if rule.kind not in ("any", kind):
                continue
            window = f"{rule.within_minutes:g} min"
            text = state.fire_alert(
                map_name, rule.name, rule.action,
                kinds=None if rule.kind == "any" else [rule.kind], count=rule.count,
                since=now - rule.within_minutes * 60, now=now,
                describe=functools.partial(_describe, map_name, kind, window, message))
            if text is None:
                continue
            if defer is None:
                self._act(rule, map_name, kind, text)
            else:
                defer(functools.partial(self._act, rule, map_name, kind, text))
            fired.append(rule.action)
        return fired

    def _act(self, rule: AlertRule, map_name: str, kind: str, text: str) -> None:
        log.warning("alert: %s -> %s", text, rule.action)
        if rule.action == "pause":
            self.link.pause_maps([map_name])
        elif rule.action == "stop":
            self.link.stop_maps([map_name])
        elif rule.action == "webhook" and rule.url:
            body = json.dumps({"map": map_name, "kind": kind, "rule": rule.name,
                               "message": text, "at": time.time()}).encode()
            req = urllib.request.Request(rule.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=5):
                    pass
            except OSError as exc:
                log.warning("alert webhook %s failed: %s", rule.url, exc)
                self.link.state.add_alert(map_name, rule.name, "webhook-failed", str(exc),
                                          time.time())

    def queue_level(self, map_name: str, used: float, rows: int, size: int, age: float
                    ) -> None:
        """Raise a ``queue`` event when a map's queue crosses 80% (and again at 100%) of its
        budget; once per crossing, not on every check."""
        with self._lock:
            before = self._levels.get(map_name, 0.0)
            self._levels[map_name] = used
        for level in (QUEUE_ALERT_LEVEL, 1.0):
            if before < level <= used:
                self.record(map_name, "queue",
                            f"queue at {used:.0%} of its budget ({rows} changes, {size} "
                            f"bytes, oldest {age:.0f} s); nothing is dropped, it replays in "
                            "order when the map is resumed or the target is back")
