"""Where a sample's time goes at batch 1: the network's forward passes, or the sampler's own work.

For each run (and sampler options), draws `--samples` unconditional samples of `--length` characters
one at a time and reports characters per second, forward passes, characters and rows (query tokens)
per pass, and the wall time per pass split into the network's forward and everything else (drawing
tokens, masks, caches, bookkeeping). A sampler that commits more characters per pass wins only if
its passes do not cost that much more.

    python bench/decode_breakdown.py --dtype fp32 runs/ar 'speculative=runs/bd3' \
        'threshold 0.9={"speculative": false, "threshold": 0.9}=runs/bd3'

Each item is RUN, LABEL=RUN or LABEL=OPTIONS_JSON=RUN. Prints a table and writes JSON
(default bench/results/decode_breakdown.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from machine import run_header  # noqa: E402 (bench/ is on the path when run)

from dlm.errors import DlmError
from dlm.inference import load
from dlm.io import atomic_write_json


def parse_item(item: str) -> tuple[str, dict, str]:
    """'RUN' | 'LABEL=RUN' | 'LABEL=OPTIONS_JSON=RUN' → (label, options, run)."""
    parts = item.split("=", 1)
    if len(parts) == 1:
        return item, {}, item
    label, rest = parts
    if rest.startswith("{"):
        end = rest.rindex("}") + 1
        return label, json.loads(rest[:end]), rest[end:].removeprefix("=")
    return label, {}, rest


def breakdown(run: str, options: dict, dtype: str, samples: int, length: int) -> dict:
    pipe = load(run, dtype=dtype)
    forward = pipe.model.forward
    spent = {"seconds": 0.0, "passes": 0, "rows": 0}

    def timed_forward(idx: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        started = time.perf_counter()
        out = forward(idx, *args, **kwargs)
        spent["seconds"] += time.perf_counter() - started
        spent["passes"] += 1
        spent["rows"] += idx.shape[1]
        return out

    pipe.model.forward = timed_forward
    pipe.sample("", length=min(length, 64), seed=0, **options)  # first-call allocations
    spent.update(seconds=0.0, passes=0, rows=0)
    chars, started = 0, time.perf_counter()
    for seed in range(samples):
        chars += int(pipe.sample("", length=length, seed=seed, **options).generated.sum())
    wall = time.perf_counter() - started
    passes = spent["passes"]
    return {"run": run, "options": options, "dtype": str(pipe.dtype).removeprefix("torch."),
            "chars_per_s": chars / wall, "passes": passes, "chars_per_pass": chars / passes,
            "rows_per_pass": spent["rows"] / passes, "network_ms_per_pass": spent["seconds"] / passes * 1e3,
            "rest_ms_per_pass": (wall - spent["seconds"]) / passes * 1e3, "samples": samples, "length": length}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("items", nargs="+", metavar="[LABEL=[OPTIONS_JSON=]]RUN")
    parser.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp32"))
    parser.add_argument("--samples", type=int, default=8, help="samples timed, one at a time")
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--json", default="bench/results/decode_breakdown.json")
    args = parser.parse_args()
    rows = {}
    print("| run · sampler | chars/s | passes | chars/pass | rows/pass | network ms/pass | rest ms/pass |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for item in args.items:
        try:
            label, options, run = parse_item(item)
        except ValueError:
            parser.error(f"{item!r}: write RUN, LABEL=RUN or LABEL={{\"option\": value}}=RUN (options as JSON)")
        try:
            row = rows[label] = breakdown(run, options, args.dtype, args.samples, args.length)
        except DlmError as e:
            print(f"decode_breakdown: {e}", file=sys.stderr)
            return 1
        print(f"| {label} | {row['chars_per_s']:,.0f} | {row['passes']:,} | {row['chars_per_pass']:.2f} | "
              f"{row['rows_per_pass']:.1f} | {row['network_ms_per_pass']:.3f} | {row['rest_ms_per_pass']:.3f} |",
              flush=True)
    report = {**run_header("decode_breakdown.py"), "rows": rows}
    atomic_write_json(Path(args.json), report)
    print(f"{report['machine']}; written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
