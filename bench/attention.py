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
    python bench/attention.py --inference              # sampling: a few queries against cached keys,
                                                      # bool mask, forward only, eager, batch 1 and 32

Prints a table (median milliseconds per forward + backward; microseconds per forward with
--inference) and writes JSON.
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


def inference_rows(args: argparse.Namespace) -> list[dict]:
    """Forward only, no autograd, eager: what a sampler's step costs, one query (the AR twin), a block
    (4) or a self-speculative pass (20) against 128 cached keys plus themselves, under a bool mask."""
    from dlm.model.transformer import explicit_attention

    rows = []
    print(f"{'dtype':6} {'batch':>5} {'queries':>7} {'explicit us':>12} {'sdpa us':>9} {'qkv proj. us':>14}")
    for dtype_name in args.dtypes:
        dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
        for batch in (1, 32):
            for queries in (1, 4, 20):
                torch.manual_seed(0)
                q = torch.randn(batch, args.heads, queries, args.head_dim, dtype=dtype)
                k, v = (torch.randn(batch, args.heads, queries + 128, args.head_dim, dtype=dtype) for _ in range(2))
                mask = torch.rand(batch, 1, queries, queries + 128) < 0.8
                mask[..., 0] = True
                paths = {"explicit": lambda q=q, k=k, v=v, m=mask: explicit_attention(q, k, v, False, 0.0, m),
                         "sdpa": lambda q=q, k=k, v=v, m=mask: F.scaled_dot_product_attention(q, k, v, attn_mask=m)}
                with torch.no_grad():
                    us = {name: 1e6 * median_seconds(fn, False, args.repeats) for name, fn in paths.items()}
                # and the layer's first projection (d → 3d) over the same rows: what more rows cost
                d = args.heads * args.head_dim
                x, w = torch.randn(batch, queries, d), torch.randn(3 * d, d)
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                    us["qkv_projection"] = 1e6 * median_seconds(lambda x=x, w=w: F.linear(x, w), False, args.repeats)
                rows.append({"dtype": dtype_name, "batch": batch, "queries": queries, "keys": queries + 128,
                             "us": us})
                print(f"{dtype_name:6} {batch:5} {queries:7} {us['explicit']:12.1f} {us['sdpa']:9.1f} "
                      f"{us['qkv_projection']:14.1f}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--head-dim", type=int, default=48)
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=("fp32", "bf16"))
    parser.add_argument("--compile", nargs="+", default=["yes"], choices=("yes", "no"))
    parser.add_argument("--repeats", type=int, default=20, help="timed repeats (the median is reported)")
    parser.add_argument("--json", default=None, help="default bench/results/attention[_inference].json")
    parser.add_argument("--inference", action="store_true",
                        help="time sampling's attention instead: forward only, few queries, cached keys, bool mask")
    args = parser.parse_args()
    if args.inference:
        rows = inference_rows(args)
        write_report(args.json or "bench/results/attention_inference.json", rows, heads=args.heads,
                     head_dim=args.head_dim, unit_note="median microseconds per forward (eager, no autograd)")
        return
    args.json = args.json or "bench/results/attention.json"

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
