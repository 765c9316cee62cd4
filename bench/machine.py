"""Name the CPU a figure came from: its vendor line and its class for dlm (AVX2, AVX512-BF16, AMX)."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or platform.machine()
    for line in text.splitlines():
        if line.startswith("model name"):
            return " ".join(line.split(":", 1)[1].split())
    return platform.machine()


def cpu_class(flags: set[str] | None = None) -> str:
    """dlm's CPU classes: bf16 training needs AVX512-BF16 or AMX; without them dlm trains in fp32."""
    flags = cpu_flags() if flags is None else flags
    if "amx_bf16" in flags:
        return "AVX512-BF16 + AMX"
    if "avx512_bf16" in flags:
        return "AVX512-BF16 (no AMX)"
    if "avx512f" in flags:
        return "AVX-512 without bf16"
    if "avx2" in flags:
        return "AVX2 only"
    return platform.machine()


def describe_cpu() -> str:
    """E.g. 'AMD EPYC, AVX512-BF16 (no AMX), 2 vCPUs'."""
    import os

    return f"{cpu_model()}, {cpu_class()}, {os.cpu_count()} vCPUs"


def run_header(script: str) -> dict:
    """What every bench's JSON opens with: the command that wrote it, the machine (CPU class and torch), the date."""
    import shlex
    import sys
    import time

    import torch

    return {"command": f"python bench/{script} " + shlex.join(sys.argv[1:]),
            "machine": f"{describe_cpu()}, torch {torch.__version__}", "date": time.strftime("%Y-%m-%d")}


def save_report(report: dict, path: str) -> None:
    """Write a bench's JSON (atomically, its folder made) and say where, with the machine it ran on."""
    from dlm.io import atomic_write_json

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(path), report)
    print(f"{report['machine']}; written to {path}")
