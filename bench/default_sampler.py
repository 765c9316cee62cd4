"""Which sampler should `dlm sample` use by default? Candidates against the AR twin, at equal steps.

    python bench/default_sampler.py --diffusion runs/mdlm --ar runs/ar --samples 64 --steps 256 \\
        --markdown docs/study.md

Every candidate draws `--samples` unconditional samples of `--length` characters in `--steps`
steps; each row reports the AR twin's gen-PPL of them, their unigram entropy, self-BLEU,
distinct-2 and MAUVE against as many random validation windows (features from the AR twin, the
same windows for every row), beside the AR twin's own samples. A candidate passes when its entropy
and self-BLEU are within 10 % of the AR twin's and its MAUVE is at least 0.8× the AR twin's.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from dlm.data.shards import prepare_corpus
from dlm.eval.generation_eval import evaluate_generation
from dlm.inference import load
from dlm.io import atomic_write_json, atomic_write_text

CANDIDATES: dict[str, dict] = {
    "confidence (the old default)": {"sampler": "confidence"},
    "confidence, top-p 0.9, repetition 1.3": {"sampler": "confidence", "top_p": 0.9, "repetition_penalty": 1.3},
    "ancestral": {"sampler": "ancestral"},
    "random order": {"sampler": "random"},
    "margin": {"sampler": "margin"},
    "confidence, ReMDM η=0.05": {"sampler": "confidence", "remask": 0.05},
    "confidence, cosine schedule": {"sampler": "confidence", "schedule": "cosine"},
    "confidence, blocks of 32 (prefix)": {"sampler": "confidence", "block_length": 32, "block_context": "prefix",
                                          "kv_cache": True},
    "confidence, blocks of 16 (prefix)": {"sampler": "confidence", "block_length": 16, "block_context": "prefix",
                                          "kv_cache": True},
    "random order, blocks of 32 (prefix)": {"sampler": "random", "block_length": 32, "block_context": "prefix",
                                            "kv_cache": True},
}
METRICS = ("gen_ppl", "unigram_entropy", "self_bleu", "distinct_2", "mauve")


def verdict(row: dict, ar: dict) -> bool:
    close = lambda key: abs(row[key] - ar[key]) <= 0.1 * ar[key]  # noqa: E731
    return close("unigram_entropy") and close("self_bleu") and row["mauve"] >= 0.8 * ar["mauve"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--diffusion", required=True)
    parser.add_argument("--ar", required=True)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--candidates", help="comma-separated subset of the candidate names")
    parser.add_argument("--json", default="bench/results/default_sampler.json")
    parser.add_argument("--markdown", help="write the table between the bench/default_sampler.py markers")
    args = parser.parse_args()
    diffusion, ar = load(args.diffusion), load(args.ar)
    split = prepare_corpus(diffusion.config.data, tokenizer=diffusion.tokenizer).split("val")
    common = {"num_samples": args.samples, "length": args.length, "batch_size": args.batch_size, "seed": args.seed,
              "judge": args.ar, "mauve": True}
    rows = {"AR twin": evaluate_generation(ar, split, steps=args.length, **common)}
    print("AR twin", {k: round(rows["AR twin"][k], 3) for k in METRICS}, flush=True)
    names = args.candidates.split(",") if args.candidates else list(CANDIDATES)
    for name in names:
        rows[name] = evaluate_generation(diffusion, split, steps=args.steps, sampler_options=CANDIDATES[name],
                                         **common)
        print(name, {k: round(rows[name][k], 3) for k in METRICS}, f"{rows[name]['wall_s']:.0f} s", flush=True)
    report = {"settings": vars(args), "date": time.strftime("%Y-%m-%d"),
              "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
              "rows": {k: {m: v[m] for m in (*METRICS, "wall_s", "forward_passes", "tokens_per_s")}
                       for k, v in rows.items()}}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(args.json), report)
    ar_row = rows["AR twin"]
    lines = [f"Command: `python bench/default_sampler.py {' '.join(sys.argv[1:])}` on {report['date']} "
             f"({report['machine']}). {args.samples} unconditional samples × {args.length} characters per row, "
             f"{args.steps} steps for diffusion rows; judge and MAUVE features: the AR twin; MAUVE reference: "
             f"{args.samples} random validation windows (the same for every row).", "",
             "| sampler | gen-PPL (AR judge) | unigram entropy | self-BLEU | distinct-2 | MAUVE | tokens/s | passes? |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, r in rows.items():
        ok = "—" if name == "AR twin" else ("**yes**" if verdict(r, ar_row) else "no")
        lines.append(f"| {name} | {r['gen_ppl']:.2f} | {r['unigram_entropy']:.3f} | {r['self_bleu']:.3f} | "
                     f"{r['distinct_2']:.3f} | {r['mauve']:.3f} | {r['tokens_per_s']:,.0f} | {ok} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        begin, end = "<!-- bench/default_sampler.py: begin -->", "<!-- bench/default_sampler.py: end -->"
        page = Path(args.markdown).read_text() if Path(args.markdown).is_file() else f"{begin}\n{end}\n"
        head, rest = page.split(begin, 1)
        atomic_write_text(Path(args.markdown), f"{head}{begin}\n{text}{end}{rest.split(end, 1)[1]}")
    print(json.dumps({"passing": [k for k, r in rows.items() if k != "AR twin" and verdict(r, ar_row)]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
