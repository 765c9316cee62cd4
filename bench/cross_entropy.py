"""The output head's cross-entropy, spelt two ways: what a training step pays for its logits.

Every dlm objective scores (B, T, V) logits against (B, T) targets. The usual spelling,
`F.cross_entropy(logits.transpose(1, 2), target)`, hands the kernels a strided (B, V, T) view; dlm reads
the logits as B·T rows of V instead (dlm.objectives.cross_entropy). Both give the same numbers. Two tables:

  - the head (a linear layer from `--d-model`) and the loss alone, forward and backward, at each
    vocabulary and BATCHxLENGTH of logits;
  - whole training passes (forward and backward of the model and the real objective, bd3 or ar, at the
    README's 3 × 192 size, 16 windows of 256 tokens, compiled) with each spelling patched into the
    objectives, in one process.

In both the two spellings take turns, so a slow minute of the machine falls on both alike, and the bench
stops if they disagree.

    python bench/cross_entropy.py --vocab 70 2048 --dtype fp32

Prints milliseconds a call (medians) and writes JSON (default bench/results/cross_entropy.json).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from machine import run_header, save_report  # noqa: E402 (bench/ is on the path when run)
from timing import EveryRow, median_ms_in_turns, recipe_model, recipe_pass

from dlm.objectives.cross_entropy import token_cross_entropy
from dlm.runtime import pin_cpu_vector_width


def transposed(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.transpose(1, 2), target, reduction="none")


SPELLINGS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "transposed (B, V, T)": transposed, "rows (B·T, V)": token_cross_entropy}


def head_and_loss(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, spelling: Callable,
                  dtype: torch.dtype) -> torch.Tensor:
    """One forward and backward pass of the head and the loss; returns the per-token NLL."""
    hidden.grad = weight.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        logits = F.linear(hidden, weight)
    nll = spelling(logits.float(), target)  # as the objectives do: the loss in fp32
    nll.sum().backward()
    return nll.detach()


def time_spellings(batch: int, length: int, vocab: int, d_model: int, dtype: torch.dtype,
                   repeats: int) -> dict[str, float]:
    """Median milliseconds a call of each spelling, timed in turns; raises if they disagree."""
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(batch, length, d_model, generator=generator).requires_grad_()
    weight = (torch.randn(vocab, d_model, generator=generator) * 0.02).requires_grad_()
    target = torch.randint(0, vocab, (batch, length), generator=generator)
    results = {name: head_and_loss(hidden, weight, target, fn, dtype) for name, fn in SPELLINGS.items()}
    first, *others = results.values()
    for other in others:
        if not torch.allclose(first, other, rtol=1e-4, atol=1e-4):
            raise SystemExit("cross_entropy: the two spellings disagree (they must not)")
    times: dict[str, list[float]] = {name: [] for name in SPELLINGS}
    for _ in range(repeats):
        for name, fn in SPELLINGS.items():
            started = time.perf_counter()
            head_and_loss(hidden, weight, target, fn, dtype)
            times[name].append((time.perf_counter() - started) * 1e3)
    return {name: statistics.median(ms) for name, ms in times.items()}


def time_steps(objective: str, vocab: int, dtype: torch.dtype, repeats: int) -> dict[str, float]:
    """Median milliseconds of a training pass (forward and backward, no optimizer) of the 3 × 192 model under
    `objective` with each spelling patched into dlm's objectives, in turns."""
    import dlm.objectives.autoregressive as autoregressive
    import dlm.objectives.block_diffusion as block_diffusion

    torch._dynamo.reset()  # each model compiles afresh (one code object would hit the recompile limit)
    model = recipe_model(vocab, objective)
    pin_cpu_vector_width()
    # every row through the head, as when these figures were taken (the objectives now skip unscored rows,
    # bench/scored_rows.py), so both spellings read (B, T, V) logits
    compiled = EveryRow(torch.compile(model), model.cfg)
    x = torch.randint(0, vocab - 8, (16, 256))
    noise = torch.Generator()

    def one_pass() -> float:
        return recipe_pass(compiled, model, x, objective, dtype, noise)

    def patched(fn: Callable) -> None:
        block_diffusion.token_cross_entropy = autoregressive.token_cross_entropy = fn

    def with_spelling(fn: Callable) -> Callable[[], float]:
        return lambda: (patched(fn), one_pass())[1]

    try:
        return median_ms_in_turns({name: with_spelling(fn) for name, fn in SPELLINGS.items()}, repeats,
                                  "cross_entropy")
    finally:
        patched(token_cross_entropy)


def parse_rows(text: str) -> tuple[int, int]:
    try:
        batch, length = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rows {text!r}: write BATCHxLENGTH, e.g. 16x512") from None
    return batch, length


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, nargs="+", default=[70, 2048],
                        help="vocabulary sizes (70: the characters and specials; 2048: the BPE recipe)")
    parser.add_argument("--rows", type=parse_rows, nargs="+", default=[(16, 512), (64, 512)],
                        help="BATCHxLENGTH of the logits (a bd3 step: 2 × the context; the BPE recipe: 16x512)")
    parser.add_argument("--d-model", type=int, default=192)
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="the head's precision")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls of each spelling (the median is kept)")
    parser.add_argument("--objectives", nargs="*", choices=("bd3", "ar"), default=["bd3", "ar"],
                        help="whole training passes of these objectives (none: the head and loss alone)")
    parser.add_argument("--json", default="bench/results/cross_entropy.json")
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    report = {**run_header("cross_entropy.py"), "unit": "milliseconds a call (forward + backward), median",
              "dtype": args.dtype, "results": []}
    print(f"{'vocab':>5s} {'rows':>8s}  " + "  ".join(f"{name:>22s}" for name in SPELLINGS) + "  speed-up")
    for vocab in args.vocab:
        for batch, length in args.rows:
            ms = time_spellings(batch, length, vocab, args.d_model, dtype, args.repeats)
            speedup = ms["transposed (B, V, T)"] / ms["rows (B·T, V)"]
            report["results"].append({"vocab": vocab, "batch": batch, "length": length, "ms": ms, "speedup": speedup})
            print(f"{vocab:5d} {batch:>3d}x{length:<4d}  " + "  ".join(f"{v:22.1f}" for v in ms.values())
                  + f"  {speedup:7.2f}×", flush=True)
    print(f"\n{'objective':>9s} {'vocab':>5s}  " + "  ".join(f"{name:>22s}" for name in SPELLINGS)
          + "  speed-up   (a whole training pass, ms)")
    report["steps"] = []
    for objective in args.objectives:
        for vocab in args.vocab:
            ms = time_steps(objective, vocab, dtype, args.repeats)
            speedup = ms["transposed (B, V, T)"] / ms["rows (B·T, V)"]
            report["steps"].append({"objective": objective, "vocab": vocab, "ms": ms, "speedup": speedup})
            print(f"{objective:>9s} {vocab:5d}  " + "  ".join(f"{v:22.1f}" for v in ms.values())
                  + f"  {speedup:7.2f}×", flush=True)
    save_report(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
