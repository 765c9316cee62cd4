"""Where a block model's bound goes: the exact block NELBO taken apart by mask pattern and by order.

The block NELBO of blocks of B is a weighted sum over the 2^B − 1 ways of masking a block
(dlm.eval.likelihood.exact_block_nelbo), and equally the mean over the B! orders of revealing a block
of the NLL along that order (an any-order autoregressive loss). This bench scores every pattern once
and prints:

  * the exact NELBO (nats/token, no Monte-Carlo error) and its s.e. over windows;
  * the NLL along the left-to-right order (an exact likelihood: the network decoding each block one
    token at a time, left to right), the right-to-left order, and the best and worst order;
  * every pattern's mean NLL per masked token, with its weight in the bound;
  * for runs whose clean copy learnt next-token prediction, that clean copy's exact NLL on the same
    windows (tokens 2 … L), the figure self-speculative decoding samples from.

A network that were a perfect model of the text would give every order the same NLL; the spread
between orders is what the bound pays for averaging over them.

    python bench/block_orders.py --ckpt runs/bd3 --json runs/block_orders.json
    python bench/block_orders.py --ckpt runs/bd3 --windows 64 --dtype bf16     # a quick look
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import describe_cpu  # noqa: E402

from dlm.data.loader import eval_windows  # noqa: E402
from dlm.data.shards import prepare_corpus  # noqa: E402
from dlm.errors import DlmError  # noqa: E402
from dlm.eval.likelihood import (  # noqa: E402
    EXACT_LIMIT_BLOCK,
    block_pattern_nll,
    clean_copy_nll,
    mask_pattern_weight,
    mask_patterns,
    nelbo_from_table,
    order_nll,
    standard_error,
)
from dlm.inference import load  # noqa: E402
from dlm.io import atomic_write_json  # noqa: E402
from dlm.runtime import pick_dtype  # noqa: E402


def pattern_text(pattern: list[bool]) -> str:
    """'■□□■': masked positions black, visible ones white, left to right."""
    return "".join("■" if masked else "□" for masked in pattern)


def analyse(table: np.ndarray, block: int, length: int) -> dict:
    """Figures from block_pattern_nll's (N, 2^B − 1, B) table, all per token."""
    patterns = mask_patterns(block)
    per_window = nelbo_from_table(table, block, length)
    orders = {order: float(order_nll(table, order, length).mean()) for order in itertools.permutations(range(block))}
    best, worst = min(orders, key=orders.get), max(orders, key=orders.get)
    blocks = table.shape[0] * length // block  # blocks scored, each pattern once
    rows = [{"pattern": pattern_text(m), "masked": sum(m), "weight": mask_pattern_weight(sum(m), block),
             "nll_per_masked_token": {str(i): float(table[:, p, i].sum() / blocks) for i in range(block) if m[i]}}
            for p, m in enumerate(patterns)]
    return {
        "exact_nelbo": float(per_window.mean()),
        "window_standard_error": standard_error(per_window),
        "left_to_right": orders[tuple(range(block))],
        "right_to_left": orders[tuple(reversed(range(block)))],
        "best_order": {"order": list(best), "nll": orders[best]},
        "worst_order": {"order": list(worst), "nll": orders[worst]},
        "mean_over_orders": float(np.mean(list(orders.values()))),
        "patterns": rows,
    }


def markdown(report: dict, unit: str) -> str:
    block = report["block_size"]
    lines = [f"Exact block NELBO: **{report['exact_nelbo']:.4f}** nats/{unit} (s.e. over windows "
             f"{report['window_standard_error']:.4f}; {report['windows']} windows × {report['window_length']}, "
             f"{report['split']} split)",
             f"- left to right: {report['left_to_right']:.4f}; right to left: {report['right_to_left']:.4f}; "
             f"best order {report['best_order']['order']}: {report['best_order']['nll']:.4f}; worst "
             f"{report['worst_order']['order']}: {report['worst_order']['nll']:.4f}"]
    if report.get("clean_copy_nll") is not None:
        lines.append(f"- the clean copy as a next-token model: {report['clean_copy_nll']:.4f} (exact; tokens 2…L)")
    lines += ["", "| pattern (■ masked) | weight | " + " | ".join(f"NLL at {i}" for i in range(block)) + " |",
              "|---|---:|" + "---:|" * block]
    for row in report["patterns"]:
        cells = [f"{row['nll_per_masked_token'][str(i)]:.3f}" if str(i) in row["nll_per_masked_token"] else ""
                 for i in range(block)]
        lines.append(f"| {row['pattern']} | {row['weight']:.4f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="a block-diffusion run (train.objective=bd3)")
    p.add_argument("--split", default="val", choices=("val", "train"))
    p.add_argument("--windows", type=int, default=0, help="score the first N windows (default: all)")
    p.add_argument("--dtype", default="fp32", choices=("auto", "bf16", "fp32"))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    try:
        pipe = load(args.ckpt, device="auto", weights="auto", dtype=args.dtype)
        block = pipe.diffusion_block
        if not block:
            raise DlmError(f"{args.ckpt} is not a block-diffusion run (objective {pipe.objective}); this bench "
                           "takes one trained with dlm train --objective bd3")
        if block > EXACT_LIMIT_BLOCK:
            raise DlmError(f"blocks of {block} have {2 ** block - 1:,} mask patterns; this bench takes blocks of "
                           f"at most {EXACT_LIMIT_BLOCK}")
    except DlmError as e:
        print(f"block_orders: error: {e}", file=sys.stderr)
        return 2
    corpus = prepare_corpus(pipe.config.data, tokenizer=pipe.tokenizer)
    windows = eval_windows(corpus.split(args.split), pipe.config.model.block_size)
    if args.windows:
        windows = windows[:args.windows]
    dtype = pick_dtype(args.dtype, pipe.device)
    special = pipe.tokenizer.special
    table = block_pattern_nll(pipe.model, windows, special, block=block, device=pipe.device, dtype=dtype,
                              batch_size=args.batch_size, progress=not args.quiet)
    report = {"checkpoint": str(pipe.checkpoint), "split": args.split, "windows": len(windows),
              "window_length": windows.shape[1], "block_size": block, "dtype": str(dtype).removeprefix("torch."),
              "machine": describe_cpu(), "torch": torch.__version__, "date": dt.date.today().isoformat(),
              "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
              **analyse(table, block, windows.shape[1])}
    cfg = pipe.config
    if cfg.model.clean_causal and cfg.diffusion.clean_ar_weight:
        report["clean_copy_nll"] = clean_copy_nll(pipe.model, windows, special, device=pipe.device, dtype=dtype,
                                                  batch_size=args.batch_size)["nats_per_token"]
    unit = "char" if pipe.tokenizer.kind == "char" else "token"
    print(markdown(report, unit))
    print(f"({report['machine']}, {report['dtype']}, {report['date']})")
    if args.json:
        atomic_write_json(Path(args.json), report)
        print(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
