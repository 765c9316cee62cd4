"""The output head on the scored rows only, against every row: what a training pass saves.

dlm's diffusion objectives multiply the loss of every unmasked position by 0, and now ask dlm's Transformer
for the logits of the scored rows alone (dlm.objectives.scored_rows): the masked positions (and, under
block diffusion, the clean copy's next-token rows). This times whole training passes (forward and backward
of the model and the real objective, no optimizer) of the README's 3 × 192 model on 16 windows of 256
tokens, compiled, both ways in turns in one process, and stops if their losses differ.

    python bench/scored_rows.py --vocab 70 2048 --dtype bf16

Prints milliseconds a pass (medians) and writes JSON (default bench/results/scored_rows.json).
"""

from __future__ import annotations

import argparse

import torch
from machine import run_header, save_report  # noqa: E402 (bench/ is on the path when run)
from timing import EveryRow, median_ms_in_turns, recipe_model, recipe_pass

from dlm.runtime import pin_cpu_vector_width

OBJECTIVES = ("bd3", "mdlm")


def time_pass(objective: str, vocab: int, dtype: torch.dtype, batch: int, repeats: int) -> dict[str, float]:
    """Median milliseconds of a training pass with every row and with the scored rows through the head."""
    torch._dynamo.reset()  # each model compiles afresh (one code object would hit the recompile limit)
    model = recipe_model(vocab, objective)
    pin_cpu_vector_width()
    compiled = torch.compile(model)
    x = torch.randint(0, vocab - 8, (batch, 256))
    noise, every_row = torch.Generator(), EveryRow(compiled, model.cfg)
    return median_ms_in_turns({"every row": lambda: recipe_pass(every_row, model, x, objective, dtype, noise),
                               "scored rows": lambda: recipe_pass(compiled, model, x, objective, dtype, noise)},
                              repeats, "scored_rows")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, nargs="+", default=[70, 2048],
                        help="vocabulary sizes (70: the characters and specials; 2048: the BPE recipe)")
    parser.add_argument("--objectives", nargs="+", choices=OBJECTIVES, default=list(OBJECTIVES))
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--batch", type=int, default=16, help="windows of 256 tokens a pass")
    parser.add_argument("--repeats", type=int, default=10, help="timed passes of each way (the median is kept)")
    parser.add_argument("--json", default="bench/results/scored_rows.json")
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    report = {**run_header("scored_rows.py"), "unit": "milliseconds a training pass (forward + backward), median",
              "dtype": args.dtype, "batch": args.batch, "results": []}
    print(f"{'objective':>9s} {'vocab':>5s}  {'every row':>10s}  {'scored rows':>11s}  speed-up")
    for objective in args.objectives:
        for vocab in args.vocab:
            ms = time_pass(objective, vocab, dtype, args.batch, args.repeats)
            speedup = ms["every row"] / ms["scored rows"]
            report["results"].append({"objective": objective, "vocab": vocab, "ms": ms, "speedup": speedup})
            print(f"{objective:>9s} {vocab:5d}  {ms['every row']:10.1f}  {ms['scored rows']:11.1f}  {speedup:7.2f}×",
                  flush=True)
    save_report(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
