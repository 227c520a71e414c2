"""Garbage-collector settings for dualwrite's long-running processes (``dualwrite run`` and
``dualwrite serve``).

CPython's cyclic collector stops the process while it walks the objects it tracks. A full
collection walks all of them: in an applier process, everything imported and set up at
start-up (modules, SQLAlchemy metadata and statement caches, the maps), which took about
25 ms a time here. That pause lands on whatever change is being applied, and was the whole
99th percentile of capture lag at 1,000 changes/s. A large transaction (20,000 changes,
each an object or two) also set off several full collections, about 90 ms of its apply.

Nothing here changes what is freed: objects without cycles go when their last reference
does, as always, and cycles are still collected, only less often.
"""

from __future__ import annotations

import gc

#: allocations (net of deallocations) between young collections; CPython's default is 700.
#: A young collection walks only the young objects, so fewer, larger ones cost the same in
#: all and set off the older generations' collections less often.
YOUNG_THRESHOLD = 10_000


def settle_for_latency() -> None:
    """Collect once, then move every object alive now (start-up state that lives as long as
    the process) out of the collector's sight (``gc.freeze``), and make young collections
    less frequent. Call once, when start-up is done and before the steady work begins;
    calling again freezes what has been allocated since."""
    gc.collect()
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
