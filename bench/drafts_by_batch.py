"""How many self-speculative drafts are fastest at each batch size, against the AR twin.

The self-speculative sampler writes the same text whatever its drafts (dlm.sampling.self_speculative): they
decide only how many tokens a pass commits and how many rows the pass carries. For one sample the rows are
nearly free; for many they cost compute. So the best number depends on the batch, and dlm's default
(`default_drafts`) follows it. For each batch size this bench draws `--turns` batches of unconditional
samples with the AR twin and with the block model at each number of drafts, the samplers taking turns (a
slow minute of the machine falls on all of them alike). It checks that every number of drafts wrote the same
text, and prints characters a second and the ratio to the twin, marking the fastest and the default.

    python bench/drafts_by_batch.py --bd3 runs/bd3 --ar runs/ar --batches 1 2 4 8 32 --turns 4 --dtype fp32

Prints a table and writes JSON (default bench/results/drafts_by_batch.json).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

from machine import run_header  # noqa: E402 (bench/ is on the path when run)

from dlm.errors import DlmError
from dlm.eval.characters import written_characters
from dlm.inference import load
from dlm.io import atomic_write_json
from dlm.sampling.self_speculative import default_drafts


def time_batch(twin, block, batch: int, drafts: list[int], turns: int, length: int, options: dict,
               clock: Callable[[], float] = time.perf_counter) -> dict:
    """Characters a second of the twin and of the block model at each number of drafts, `turns` batches each,
    in turns; exits if two numbers of drafts wrote different text."""
    names = ["twin", *drafts]
    spent = {name: [0.0, 0] for name in names}
    for turn in range(turns):
        texts = {}
        for name in names:
            pipe, extra = (twin, {}) if name == "twin" else (block, {"drafts": name})
            started = clock()
            result = pipe.sample([""] * batch, length=length, seed=1000 * turn, **options, **extra)
            spent[name][0] += clock() - started
            spent[name][1] += written_characters(pipe.tokenizer, result.tokens, result.generated)
            if name != "twin":
                texts[name] = result.tokens.tolist()
        if len({json.dumps(t) for t in texts.values()}) > 1:
            raise SystemExit("drafts_by_batch: the drafts changed the text (they must not): a bug in the sampler")
    speed = {name: chars / seconds for name, (seconds, chars) in spent.items()}
    by_drafts = {k: speed[k] for k in drafts}
    return {"batch": batch, "turns": turns, "twin_chars_per_s": speed["twin"],
            "chars_per_s": {str(k): v for k, v in by_drafts.items()},
            "speed_vs_ar": {str(k): v / speed["twin"] for k, v in by_drafts.items()},
            "fastest_drafts": max(by_drafts, key=by_drafts.get),
            "default_drafts": default_drafts(batch, block.diffusion_block, block.device.type,
                                              block.model.cfg.vocab_size)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bd3", required=True, help="a block run whose clean copy learnt next-token prediction")
    parser.add_argument("--ar", required=True, help="its AR twin")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 32])
    parser.add_argument("--drafts", type=int, nargs="+", default=[0, 1, 2], help="numbers of drafts to time")
    parser.add_argument("--turns", type=int, default=4, help="batches timed per sampler and batch size")
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--top-p", type=float, default=None, help="top-p for both models (default: none)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp32"))
    parser.add_argument("--json", default="bench/results/drafts_by_batch.json")
    args = parser.parse_args()
    try:
        twin, block = load(args.ar, dtype=args.dtype), load(args.bd3, dtype=args.dtype)
    except DlmError as e:
        parser.error(str(e))
    if not block.drafts_itself:
        parser.error(f"{args.bd3} is not a block run whose clean copy learnt next-token prediction")
    if max(args.drafts) > block.diffusion_block - 1:
        parser.error(f"--drafts: a block of {block.diffusion_block} drafts at most {block.diffusion_block - 1}")
    options = {"top_p": args.top_p} if args.top_p else {}
    for pipe in (twin, block):  # first-call allocations, untimed
        pipe.sample([""] * 2, length=min(32, args.length), seed=0, **options)
    drafts = sorted(set(args.drafts))
    print("| batch | twin chars/s | " + " | ".join(f"{k} draft{'s' * (k != 1)} × AR" for k in drafts) + " |")
    print("|---:|---:|" + "---:|" * len(drafts))
    rows = []
    for batch in args.batches:
        row = time_batch(twin, block, batch, drafts, args.turns, args.length, options)
        rows.append(row)
        cells = []
        for k in drafts:
            cell = f"{row['speed_vs_ar'][str(k)]:.2f}"
            cell = f"**{cell}**" if k == row["fastest_drafts"] else cell
            cells.append(cell + (" (default)" if k == row["default_drafts"] else ""))
        print(f"| {batch} | {row['twin_chars_per_s']:,.0f} | " + " | ".join(cells) + " |", flush=True)
    report = {**run_header("drafts_by_batch.py"), "dtype": str(block.dtype).removeprefix("torch."),
              "length": args.length, "top_p": args.top_p,
              "rows": rows}
    atomic_write_json(Path(args.json), report)
    print(f"bold: the fastest. {report['machine']}, {report['dtype']}; written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
