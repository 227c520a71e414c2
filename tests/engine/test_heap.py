"""The collector settings of the long-running processes: start-up objects frozen, young
collections rarer, and cycles made afterwards still collected. In a child interpreter, so
that the test session's own collector is left as it was."""

from __future__ import annotations

import json
import subprocess
import sys

CHILD = """
import gc, json
from dualwrite.engine.heap import YOUNG_THRESHOLD, settle_for_latency
before = gc.get_freeze_count()
settle_for_latency()
frozen = gc.get_freeze_count()
class Node:
    pass
a, b = Node(), Node()
a.other, b.other = b, a          # a cycle made after the freeze
del a, b
found = gc.collect()
print(json.dumps({"before": before, "frozen": frozen, "found": found,
                  "threshold": list(gc.get_threshold()), "young": YOUNG_THRESHOLD}))
"""


def test_settling_freezes_start_up_and_still_collects_later_cycles() -> None:
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                          timeout=60, check=True)
    got = json.loads(done.stdout)
    assert got["before"] == 0
    assert got["frozen"] > 1000  # the imported modules and everything they hold
    assert got["found"] >= 2  # both nodes of the later cycle (and their __dict__s)
    assert got["threshold"][0] == got["young"]
