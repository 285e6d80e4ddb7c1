"""Time bounds in tests, for the slowest machine the suite runs on.

A test that bounds how long something takes (a guest stopped within 1 s of an interrupt, a
trace within its timeout) states the bound for a normal machine; ``scaled()`` stretches it by
``LABHELPER_TIME_FACTOR`` where the whole machine is known to be slower (an emulated guest, TCG:
about 20x). Speed itself is never judged by a test: benchmarks/ does that, against a peer.
"""
from __future__ import annotations

import os

FACTOR = float(os.environ.get("LABHELPER_TIME_FACTOR", "1") or 1)


def scaled(seconds: float) -> float:
    """``seconds`` on a normal machine, stretched for a slow one."""
    return seconds * FACTOR
