"""The compute-only duel's worker protocol, shared by both sides (standard library only: it runs
in recsys's venv for ours and in the peers' venv for FuxiCTR).

A worker holds ``steps`` training batches in memory, prints ``ready``, then for every ``go`` line
on stdin runs one training step per held batch and prints the seconds per step; any other line
(``stop``) or the end of stdin ends it. Both sides time exactly this loop, so the ratio compares
the steps alone.
"""

from __future__ import annotations

import itertools
import sys
import time
from typing import Callable, Iterable


def serve_held_steps(batches: Iterable, steps: int, step: Callable[[object], object]) -> None:
    """Hold the first ``steps`` of ``batches``, then answer ``go`` lines with seconds per ``step``."""
    held = list(itertools.islice(batches, steps))
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "go":
            break
        t0 = time.perf_counter()
        for batch in held:
            step(batch)
        print(f"{(time.perf_counter() - t0) / len(held):.6f}", flush=True)
