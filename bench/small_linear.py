"""How a CPU multiplies a few rows by a weight: the layouts a sampling pass could use.

A self-speculative pass of the README's block model feeds 6 to 20 rows through each linear layer, the AR
twin one. On a CPU such small products need not cost in proportion to their rows, and the weight's
layout decides the kernel: `F.linear` with the (out, in) weight as stored, `x @ W_t` with a copy stored
transposed (in, out), and MKL's packed weight for that row count (`torch.ops.mkl._mkl_linear`, what
the compiler's freezing uses on a CPU). Prints the median microseconds of each (fp32, one call at a
time) for the Transformer's four shapes at `--d-model`, and writes JSON.
Sampling on a CPU uses the transposed copy where this measured it faster (dlm/model/linear.py).

    python bench/small_linear.py --rows 1 6 12 20 32 --json bench/results/small_linear.json
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from machine import describe_cpu, save_report  # noqa: E402 (bench/ is on the path when run)


def median_us(fn: Callable[[], object], calls: int, repeats: int = 5) -> float:
    for _ in range(calls // 4):  # warm-up
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - started) / calls * 1e6)
    return statistics.median(times)


def layouts(x: torch.Tensor, weight: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
    transposed = weight.t().contiguous()
    ways = {"F.linear (out, in)": lambda: F.linear(x, weight), "x @ W_t (in, out)": lambda: x @ transposed}
    if torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear"):
        packed = torch.ops.mkl._mkl_reorder_linear_weight(weight, x.shape[0])
        ways["MKL packed"] = lambda: torch.ops.mkl._mkl_linear(x, packed, weight, None, x.shape[0])
    return ways


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-model", type=int, default=192)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 6, 12, 20, 32])
    parser.add_argument("--calls", type=int, default=2000, help="calls per timing (5 timings, the median kept)")
    parser.add_argument("--json", default="bench/results/small_linear.json")
    args = parser.parse_args()
    d = args.d_model
    shapes = {"qkv": (3 * d, d), "attention out": (d, d), "MLP up": (4 * d, d), "MLP down": (d, 4 * d)}
    results = []
    torch.manual_seed(0)
    with torch.no_grad():
        for name, (out_features, in_features) in shapes.items():
            weight = torch.randn(out_features, in_features) * 0.02
            for rows in args.rows:
                x = torch.randn(rows, in_features)
                ways = layouts(x, weight)
                reference = F.linear(x, weight)
                for way, fn in ways.items():
                    if not torch.allclose(fn(), reference, atol=1e-4):
                        print(f"small_linear: {way} disagrees with F.linear", file=sys.stderr)
                        return 1
                timed = {way: median_us(fn, args.calls) for way, fn in ways.items()}
                results.append({"layer": name, "weight": [out_features, in_features], "rows": rows, "us": timed})
                cells = "  ".join(f"{way}: {us:6.1f}" for way, us in timed.items())
                print(f"{name:13s} {out_features:4d}×{in_features:<4d} rows {rows:3d}  {cells}", flush=True)
    report = {"command": "python bench/small_linear.py " + shlex.join(sys.argv[1:]),
              "machine": f"{describe_cpu()}, torch {torch.__version__}, {torch.get_num_threads()} threads",
              "date": time.strftime("%Y-%m-%d"), "unit": "microseconds per call, median of 5", "results": results}
    save_report(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
