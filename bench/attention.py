"""CPU attention, forward + backward of one layer: which formulation is fastest per dtype and mask.

dlm's model picks its attention path on CPU from this measurement (dlm/model/transformer.py):
explicit matmuls with an additive causal bias, except causal fp32, which goes to PyTorch's
scaled_dot_product_attention. The variants timed here:

  masked_fill  explicit QKᵀ, softmax, ·V with the causal mask applied by masked_fill (dlm before)
  additive     explicit, with the causal mask added as a 0/−inf bias (dlm's explicit path now)
  sdpa         torch.nn.functional.scaled_dot_product_attention (PyTorch's CPU flash kernel)

    python bench/attention.py                         # the default run's layer, as the budget probe sizes it
                                                      # (d_model 192, 4 heads): 16 × 4 heads × 256 × 48
    python bench/attention.py --batch 16 --heads 4 --length 256 --head-dim 48 --repeats 30

Prints a table (median milliseconds per forward + backward) and writes JSON.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from timing import median_seconds, write_report


def masked_fill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    scores = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    if causal:
        T = scores.shape[-1]
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return scores.softmax(-1) @ v


def additive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    from dlm.model.transformer import explicit_attention

    return explicit_attention(q, k, v, causal, 0.0)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


VARIANTS = {"masked_fill": masked_fill_attention, "additive": additive_attention, "sdpa": sdpa_attention}


def time_variant(fn, shape: tuple[int, ...], dtype: torch.dtype, causal: bool, compiled: bool,
                 repeats: int) -> float:
    """Median seconds of forward + backward."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(shape, dtype=dtype, requires_grad=True) for _ in range(3))

    def step() -> None:
        fn(q, k, v, causal).float().sum().backward()

    return median_seconds(step, compiled, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--head-dim", type=int, default=48)
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=("fp32", "bf16"))
    parser.add_argument("--compile", nargs="+", default=["yes"], choices=("yes", "no"))
    parser.add_argument("--repeats", type=int, default=20, help="timed repeats (the median is reported)")
    parser.add_argument("--json", default="bench/results/attention.json")
    args = parser.parse_args()

    shape = (args.batch, args.heads, args.length, args.head_dim)
    rows = []
    print(f"{'dtype':6} {'compile':8} {'mask':14} " + " ".join(f"{name:>12}" for name in VARIANTS))
    for dtype_name in args.dtypes:
        dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
        for compile_setting in args.compile:
            for causal in (False, True):
                ms = {name: 1000 * time_variant(fn, shape, dtype, causal, compile_setting == "yes", args.repeats)
                      for name, fn in VARIANTS.items()}
                mask = "causal" if causal else "bidirectional"
                rows.append({"dtype": dtype_name, "compile": compile_setting == "yes", "mask": mask, "ms": ms})
                print(f"{dtype_name:6} {compile_setting:8} {mask:14} " + " ".join(f"{v:12.1f}" for v in ms.values()),
                      flush=True)
    write_report(args.json, rows, shape=list(shape))


if __name__ == "__main__":
    main()
