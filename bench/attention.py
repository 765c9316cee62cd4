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
    python bench/attention.py --block-diffusion --dtypes fp32   # block diffusion's training attention over
                                                      # [noisy | clean] (blocks of 4, a next-token clean copy),
                                                      # its query rows in 1, 2 or 4 bands, timed in turns; then
                                                      # the README recipe's whole training pass, 1 and 2 bands

Prints a table (median milliseconds per forward + backward; microseconds per forward with
--inference) and writes JSON.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from timing import median_ms_in_turns, median_seconds, write_report


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


def banded_pass(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout, bands: int, compiled: bool):
    """A forward + backward of block-diffusion attention with `bands` bands of query rows; returns its loss."""
    from dlm.model.block_attention import block_diffusion_attention

    def step() -> torch.Tensor:
        loss = block_diffusion_attention(q, k, v, layout, bands=bands).float().square().mean()
        loss.backward()
        return loss.detach()

    run = torch.compile(step) if compiled else step
    return lambda: float(run())


def block_diffusion_rows(args: argparse.Namespace) -> list[dict]:
    """Forward + backward of dlm's block-diffusion attention (dlm/model/block_attention.py) over the [noisy |
    clean] rows of the README's recipe (blocks of 4, token-causal clean copy, its rows returned), the two L × L
    parts' query rows in 1, 2 and 4 bands (each band skips the clean keys after it), timed in turns."""

    from dlm.model.block_attention import block_layout
    from dlm.runtime import pin_cpu_vector_width

    pin_cpu_vector_width()  # for the compiled rows (tests/test_runtime.py)
    rows = []
    layout = block_layout(args.length, 4, clean_causal=True, clean_rows=True)
    print(f"{'dtype':6} {'compile':8} " + " ".join(f"{f'{b} band' + 's' * (b > 1) + ' ms':>12}" for b in (1, 2, 4)))
    for dtype_name in args.dtypes:
        dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
        for compile_setting in args.compile:
            torch.manual_seed(0)
            torch._dynamo.reset()  # each dtype compiles afresh (one code object would hit the recompile limit)
            q, k, v = (torch.randn(args.batch, args.heads, 2 * args.length, args.head_dim, dtype=dtype,
                                   requires_grad=True) for _ in range(3))
            passes = {str(bands): banded_pass(q, k, v, layout, bands, compile_setting == "yes") for bands in (1, 2, 4)}
            ms = median_ms_in_turns(passes, args.repeats, "block-diffusion attention", rtol=1e-3)
            row = {"dtype": dtype_name, "compile": compile_setting == "yes", "ms_by_bands": ms}
            print(f"{dtype_name:6} {compile_setting:8} " + " ".join(f"{ms[str(b)]:12.1f}" for b in (1, 2, 4)),
                  flush=True)
            if compile_setting == "yes":
                row["whole_pass_ms_by_bands"] = whole_pass_by_bands(args.vocab, dtype, args.repeats)
                whole = row["whole_pass_ms_by_bands"]
                print(f"{'':15} the recipe's training pass (vocabulary {args.vocab}), ms: "
                      + ", ".join(f"{b} band{'s' * (b != '1')} {v:.1f}" for b, v in whole.items()), flush=True)
            rows.append(row)
    return rows


def whole_pass_by_bands(vocab: int, dtype: torch.dtype, repeats: int) -> dict[str, float]:
    """The README recipe's compiled training pass (bench/timing.py recipe_pass), its attention in 1 and 2 bands,
    in turns. The band count is read when the model compiles: each variant is its own compiled model, traced
    with its own `row_bands` in place (torch.compile keeps one entry per variant, each guarded on that function)."""
    from timing import recipe_model, recipe_pass

    import dlm.model.block_attention as block_attention

    chosen = block_attention.row_bands
    x = torch.randint(0, vocab - 8, (16, 256), generator=torch.Generator().manual_seed(0))
    passes = {}
    torch._dynamo.reset()
    for bands in (1, 2):
        def pick(length: int, block: int, copies: int, bands: int = bands) -> int:
            return bands if copies == 1 else 1

        model = recipe_model(vocab, "bd3")
        net, noise = torch.compile(model), torch.Generator()

        def run(net=net, model=model, noise=noise, pick=pick) -> float:
            block_attention.row_bands = pick
            try:
                return recipe_pass(net, model, x, "bd3", dtype, noise)
            finally:
                block_attention.row_bands = chosen

        passes[str(bands)] = run
    return median_ms_in_turns(passes, repeats, "the recipe's pass by bands", rtol=1e-4)


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
    parser.add_argument("--vocab", type=int, default=2048,
                        help="--block-diffusion's whole pass: 2048 (BPE), 70 (characters)")
    parser.add_argument("--block-diffusion", action="store_true",
                        help="time block diffusion's training attention, its query rows in 1, 2 and 4 bands")
    args = parser.parse_args()
    if args.block_diffusion:
        rows = block_diffusion_rows(args)
        write_report(args.json or "bench/results/attention_block_diffusion.json", rows,
                     shape=[args.batch, args.heads, 2 * args.length, args.head_dim],
                     unit_note="median milliseconds per forward + backward, the variants in turns")
        return
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
