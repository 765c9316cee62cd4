"""The timing loop the micro-benchmarks share: the median of a step, compiled or eager."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def median_seconds(step: Callable[[], None], compiled: bool, repeats: int) -> float:
    """Median wall seconds of `step()` over `repeats` calls, after three untimed ones."""
    torch._dynamo.reset()  # each variant compiles afresh (one code object would hit the recompile limit)
    run = torch.compile(step) if compiled else step
    for _ in range(3):  # compilation and first-call allocations
        run()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]
