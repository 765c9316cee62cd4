"""How often a self-speculative draft is accepted, and what limits it: the token before it, which the draft cannot see.

In a self-speculative pass (dlm.sampling.self_speculative) the clean copy writes column j while a group of
the noisy block drafts j + 1 reading the text before j, with j itself still [MASK]: a draft is a guess two
tokens ahead. It is accepted when it equals the clean copy's token at j + 1, both drawn with the same noise
(argmax log p + G). This bench measures that on held-out text, with the columns at the starts of blocks
(the network's positions are relative, so any column would do), and three ways to fill column j:

  * hole: [MASK], what the sampler does today;
  * true: the text's own token, the ceiling of any drafter that guesses column j;
  * guess: the block's own draw for column j (argmax log q_j + G_j), the guess a sampler could make
    before the pass: right with the rate printed, and where it is wrong the draft reads a wrong token.

For each it prints the acceptance (the share of Gumbel draws in which the draft equals the token, at
temperature 1), averaged over positions, and for "guess" what replacing the hole with it would give. Needs
a block run whose clean copy learnt next-token prediction (model.clean_causal, diffusion.clean_ar_weight).

    python bench/draft_acceptance.py --ckpt runs/bd3 --windows 64 --json runs/draft_acceptance.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import describe_cpu  # noqa: E402

from dlm.data.loader import eval_windows  # noqa: E402
from dlm.data.shards import prepare_corpus  # noqa: E402
from dlm.errors import DlmError  # noqa: E402
from dlm.inference import load  # noqa: E402
from dlm.io import atomic_write_json  # noqa: E402
from dlm.objectives.block_diffusion import block_diffusion_logits  # noqa: E402


def gumbel_like(scores: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Gumbel noise −log E, E ~ Exp(1), the sampler's noise."""
    return -torch.empty(scores.shape, dtype=scores.dtype).exponential_(generator=generator).log()


def acceptance(p: torch.Tensor, q: torch.Tensor, draws: int, generator: torch.Generator,
               where: torch.Tensor | None = None) -> float:
    """Mean over positions (those in `where`) and Gumbel draws of [argmax(log p + G) == argmax(log q + G)]."""
    hits = torch.zeros(p.shape[:-1])
    for _ in range(draws):
        g = gumbel_like(p, generator)
        hits += ((p + g).argmax(-1) == (q + g).argmax(-1)).float()
    hits /= draws
    return float(hits[where].mean() if where is not None else hits.mean())


@torch.no_grad()
def measure(model: torch.nn.Module, windows: torch.Tensor, special, block: int, draws: int, seed: int) -> dict:
    """The figures of the module docstring, on block starts j = 0, B, 2B, … of every window but the last block."""
    B, L = windows.shape
    generator = torch.Generator().manual_seed(seed)
    starts = torch.arange(0, L - block, block)
    first = torch.arange(L) % block == 0
    hole = torch.full_like(windows, special.mask)
    true = windows.masked_fill(~first, special.mask)  # each block's first token visible, the rest masked
    banned = [special.mask, special.pad, special.bos]

    def scores(logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        logits[..., banned] = float("-inf")
        return logits.log_softmax(-1)

    logits = block_diffusion_logits(model, torch.cat((hole, true), 1), windows, block, clean_rows=True)
    q_hole, q_true, clean = scores(logits[:, :L]), scores(logits[:, L:2 * L]), scores(logits[:, 2 * L:])
    p = clean[:, starts]  # the clean copy reading x_≤j: its distribution of x_{j+1}
    # The guess: the block's own draw for column j (its hole row's distribution there), one draw per position.
    guess_scores = q_hole[:, starts]
    guess = (guess_scores + gumbel_like(guess_scores, generator)).argmax(-1)  # (B, positions)
    right = guess == windows[:, starts]
    guessed = windows.clone()
    guessed[:, starts] = guess
    guessed = guessed.masked_fill(~first, special.mask)
    q_guess = scores(block_diffusion_logits(model, guessed, windows, block))[:, starts + 1]
    a_hole = acceptance(p, q_hole[:, starts + 1], draws, generator)
    a_true = acceptance(p, q_true[:, starts + 1], draws, generator)
    a_wrong = acceptance(p, q_guess, draws, generator, where=~right) if bool((~right).any()) else float("nan")
    hit = float(right.float().mean())
    return {"positions": int(B * len(starts)), "draws": draws, "acceptance_hole": a_hole, "acceptance_true": a_true,
            "guess_right_rate": hit, "acceptance_after_wrong_guess": a_wrong,
            "acceptance_with_guess": hit * a_true + (1 - hit) * a_wrong}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="a block run with a next-token clean copy (the README's default)")
    p.add_argument("--windows", type=int, default=64, help="held-out windows to read (the first N of the split)")
    p.add_argument("--draws", type=int, default=20, help="Gumbel draws per position")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="fp32", choices=("auto", "bf16", "fp32"))
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    try:
        if args.windows < 1 or args.draws < 1:
            raise DlmError("--windows and --draws must be at least 1")
        pipe = load(args.ckpt, device="cpu", weights="auto", dtype=args.dtype)
        cfg = pipe.config
        block = pipe.diffusion_block
        if not (block and block > 1 and cfg.model.clean_causal and cfg.diffusion.clean_ar_weight):
            raise DlmError(f"{args.ckpt} is not a block run whose clean copy learnt next-token prediction; train one "
                           "with dlm train (the README's default) or --objective bd3 model.clean_causal=true "
                           "diffusion.clean_ar_weight=1")
        corpus = prepare_corpus(cfg.data, tokenizer=pipe.tokenizer)
    except DlmError as e:
        print(f"draft_acceptance: error: {e}", file=sys.stderr)
        return 2
    windows = eval_windows(corpus.split("val"), cfg.model.block_size)[:args.windows]
    figures = measure(pipe.model, windows, pipe.tokenizer.special, block, args.draws, args.seed)
    report = {"checkpoint": str(pipe.checkpoint), "split": "val", "windows": len(windows), "block_size": block,
              "machine": describe_cpu(), "torch": torch.__version__, "date": dt.date.today().isoformat(),
              "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
              **figures}
    print(f"{figures['positions']:,} positions × {args.draws} draws (held-out text, temperature 1):")
    print(f"  draft accepted, column j a [MASK] (today):  {figures['acceptance_hole']:.3f}")
    print(f"  draft accepted, column j the true token:    {figures['acceptance_true']:.3f}")
    print(f"  column j guessed by the block's own draw:   right {figures['guess_right_rate']:.3f}, "
          f"accepted after a wrong guess {figures['acceptance_after_wrong_guess']:.3f}, "
          f"accepted overall {figures['acceptance_with_guess']:.3f}")
    print(f"({report['machine']}, {args.dtype}, {report['date']})")
    if args.json:
        atomic_write_json(Path(args.json), report)
        print(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
