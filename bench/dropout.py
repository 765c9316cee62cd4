"""CPU dropout, forward + backward of one residual branch: PyTorch's F.dropout against dlm's.

dlm's `dropout` (dlm/model/transformer.py) draws its mask on CPU as random bytes: it fills
64-bit words with one call of the generator and reads each word as eight mask entries, so p is
rounded to a multiple of 1/256. F.dropout draws one float per element. The variants timed here:

  none        the branch without dropout (y * 1: the floor of one elementwise pass)
  F.dropout   torch.nn.functional.dropout
  dlm         dlm.model.transformer.dropout

    python bench/dropout.py                     # the default run's branch (probe-sized, d_model 192): 16 × 256 × 192
    python bench/dropout.py --shape 16 256 192 --p 0.1 --repeats 30

Prints a table (median milliseconds per forward + backward) and writes JSON.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from timing import median_seconds, write_report

from dlm.model.transformer import dropout


def time_variant(fn, shape: tuple[int, ...], dtype: torch.dtype, compiled: bool, repeats: int) -> float:
    """Median seconds of forward + backward."""
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=dtype, requires_grad=True)

    def step() -> None:
        fn(x).float().sum().backward()

    return median_seconds(step, compiled, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs="+", default=[16, 256, 192])
    parser.add_argument("--p", type=float, default=0.1)
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=("fp32", "bf16"))
    parser.add_argument("--compile", nargs="+", default=["yes", "no"], choices=("yes", "no"))
    parser.add_argument("--repeats", type=int, default=20, help="timed repeats (the median is reported)")
    parser.add_argument("--json", default="bench/results/dropout.json")
    args = parser.parse_args()

    variants = {"none": lambda x: x * 1.0,
                "F.dropout": lambda x: F.dropout(x, args.p, True),
                "dlm": lambda x: dropout(x, args.p, True)}
    shape = tuple(args.shape)
    rows = []
    print(f"{'dtype':6} {'compile':8} " + " ".join(f"{name:>10}" for name in variants))
    for dtype_name in args.dtypes:
        dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
        for compile_setting in args.compile:
            ms = {name: 1000 * time_variant(fn, shape, dtype, compile_setting == "yes", args.repeats)
                  for name, fn in variants.items()}
            rows.append({"dtype": dtype_name, "compile": compile_setting == "yes", "ms": ms})
            print(f"{dtype_name:6} {compile_setting:8} " + " ".join(f"{v:10.2f}" for v in ms.values()), flush=True)
    write_report(args.json, rows, shape=list(shape), p=args.p)


if __name__ == "__main__":
    main()
