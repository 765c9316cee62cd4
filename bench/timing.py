"""What the micro-benchmarks share: the median of a step, compiled or eager, and the JSON report."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

from dlm.io import atomic_write_json
from dlm.runtime import cpu_has_bf16


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


def write_report(path: str, rows: list[dict], **settings) -> None:
    """Write `rows` with the bench's `settings` and the machine they came from (CPU class included)."""
    atomic_write_json(Path(path), {
        **settings, "torch": torch.__version__, "machine": platform.machine(),
        "cpu_class": "AVX512-BF16/AMX" if cpu_has_bf16() else "no bf16 units (AVX2 class)",
        "threads": torch.get_num_threads(), "unit": "median ms per forward + backward", "rows": rows})
    print(f"written to {path}")
