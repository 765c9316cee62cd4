"""Sampler benchmark: speed and sample quality of every diffusion sampler against the AR twin.

For each sampler configuration and each number of denoising steps, draws `--samples`
unconditional samples of `--length` tokens from a diffusion run, and reports forward passes,
wall time, tokens/s, generative perplexity under the AR twin (per dlm token), the samples' unigram
entropy (nats) and their real-word rate (the share of their words found in the words of the
diffusion run's training split). The AR twin's own samples (KV cache, one token per forward pass) are the
baseline row. Prints a Markdown table, writes JSON, and can replace the table in a Markdown file.

    python bench/sampling.py --diffusion runs/mdlm --ar runs/ar \
        --markdown docs/benchmarks.md           # JSON in bench/results/sampling.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
from labels import network_dtype, percent, temperature_label, unit_of
from machine import describe_cpu  # noqa: E402 (bench/ is on the path when run)

from dlm.data.loader import RandomWindows
from dlm.data.shards import prepare_corpus
from dlm.eval.generation_eval import evaluate_generation, run_word_list, word_figures
from dlm.eval.judges import judge_perplexity, load_judge
from dlm.eval.sample_metrics import sample_quality
from dlm.inference import load
from dlm.io import atomic_write_json, atomic_write_text

# name → SamplerConfig options. Steps are set per row.
SAMPLERS: dict[str, dict] = {
    "ancestral": {"sampler": "ancestral"},
    "confidence": {"sampler": "confidence"},
    "margin": {"sampler": "margin"},
    "entropy": {"sampler": "entropy"},
    "random": {"sampler": "random"},
    "confidence+rep1.2": {"sampler": "confidence", "repetition_penalty": 1.2},
    "confidence+remdm0.05": {"sampler": "confidence", "remask": 0.05},
    "confidence+threshold0.9": {"sampler": "confidence", "threshold": 0.9},
    "blocks32+prefix-cache": {"sampler": "confidence", "block_length": 32, "block_context": "prefix",
                              "kv_cache": True},
    "blocks32+dual-cache": {"sampler": "confidence", "block_length": 32, "kv_cache": True},
}
BEGIN, END = "<!-- bench/sampling.py: begin -->", "<!-- bench/sampling.py: end -->"


def held_out_row(diffusion, split, words, args: argparse.Namespace) -> dict:
    """The same measures on random validation windows: what real text scores under the judge."""
    windows = RandomWindows(split, args.length, seed=args.seed).next_batch(args.samples)
    special = set(diffusion.tokenizer.special_ids) - {diffusion.tokenizer.eos_id}  # as evaluate_generation
    texts = [diffusion.tokenizer.decode([i for i in row if i not in special]) for row in windows.tolist()]
    judge = load_judge(args.ar, diffusion)
    return {"name": "held-out text (validation windows)", "steps": 0, "forward_passes": 0, "wall_s": 0.0,
            "tokens_per_s": 0.0, **sample_quality(windows), **judge_perplexity(judge, windows),
            **word_figures(texts, words)}


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads or torch.get_num_threads())
    diffusion, ar = load(args.diffusion, device=args.device), load(args.ar, device=args.device)
    if not ar.is_autoregressive or diffusion.is_autoregressive:
        sys.exit("bench/sampling.py: --diffusion must be a diffusion run and --ar an AR run")
    corpus = prepare_corpus(diffusion.config.data, tokenizer=diffusion.tokenizer)
    words = run_word_list(diffusion, corpus.split("train"))
    common = {"num_samples": args.samples, "length": args.length, "batch_size": args.batch_size, "seed": args.seed,
              "judge": args.ar, "words": words}
    done: dict[tuple[str, int], dict] = {}
    if args.reuse and Path(args.out).is_file():  # rows of an earlier (maybe interrupted) run with these settings
        done = {(r["name"], r["steps"]): r for r in json.loads(Path(args.out).read_text())["rows"]}
    # Warm-up (allocator, thread pool) so the first timed row is not penalised.
    diffusion.generate_ids("", length=args.length, steps=2, num_samples=args.batch_size)
    report = {"rows": [], "settings": {**vars(args), "steps": args.steps}, "machine": machine(),
              "command": "python bench/sampling.py " + shlex.join(sys.argv[1:]),
              "unit": unit_of(diffusion.tokenizer.kind)}
    names = args.samplers.split(",") if args.samplers else list(SAMPLERS)
    # The AR baseline first: a failure there should not cost the minutes of diffusion rows.
    jobs = [("AR twin, KV cache", ar, {}, args.length)] + [(name, diffusion, SAMPLERS[name], steps)
                                                           for name in names for steps in args.steps]
    for name, pipe, options, steps in jobs:
        if (name, steps) in done:
            report["rows"].append(done[(name, steps)])
            continue
        result = evaluate_generation(pipe, None, steps=steps, sampler_options=options, **common)
        report["rows"].append({"name": name, **result})
        print(row_line(report["rows"][-1]), flush=True)
        atomic_write_json(Path(args.out), report)  # partial results survive an interrupted run
    report["rows"] = report["rows"][1:] + report["rows"][:1]  # the baseline row last in the table
    report["reference"] = held_out_row(diffusion, corpus.split("val"), words, args)
    return report


def machine() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "processor": describe_cpu(), "date": time.strftime("%Y-%m-%d")}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def row_line(r: dict) -> str:
    return (f"{r['name']:26s} steps {r['steps']:4d}  passes {r['forward_passes']:4d}  wall {r['wall_s']:7.2f} s  "
            f"{r['tokens_per_s']:8.0f} tok/s  gen-PPL {r['gen_ppl']:7.3f}  entropy {r['unigram_entropy']:.3f}  "
            f"real words {percent(r.get('real_word_rate'))} %")


def markdown_table(report: dict) -> str:
    s, ref = report["settings"], report["reference"]
    unit = report.get("unit", "character")  # reports written before the unit was recorded: char runs
    dtypes = sorted({r["dtype"] for r in report["rows"] if "dtype" in r})
    words = next((r["word_list_size"] for r in [*report["rows"], ref] if "word_list_size" in r), None)
    command = report.get("command") or (f"python bench/sampling.py --diffusion {s['diffusion']} --ar {s['ar']} "
                                        f"--samples {s['samples']} --batch-size {s['batch_size']}")
    lines = [BEGIN, "",
             f"Command: `{command}` (JSON: `{s['out']}`).",
             "",
             f"{s['samples']} unconditional samples × {s['length']} {unit}s per row, in one batch of "
             f"{s['batch_size']}, seed {s['seed']}, {temperature_label(report['rows'])}, "
             f"{', '.join(network_dtype(d) for d in dtypes)}. **gen-PPL**: exp(mean NLL per {unit}) "
             f"of the samples under the AR twin `{s['ar']}` (lower = more fluent to the judge). **Entropy**: mean "
             f"per-sample unigram entropy of the {unit}s, in nats (low = repetitive). **Real words**: the share of "
             "the samples' words found in the word list of the diffusion run's training split"
             + (f" ({words:,} words)" if words else "") + ", in %, ± its standard error (it sees misspelt words, "
             f"which gen-PPL can forgive). For scale, {s['samples']} random validation windows of real text score "
             f"gen-PPL {ref['gen_ppl']:.2f}, entropy {ref['unigram_entropy']:.3f} and real words "
             f"{percent(ref.get('real_word_rate'))} %. **Forward passes**: model calls for the whole batch. "
             f"**Wall time**: sampling only (judging excluded); **tokens/s** = generated {unit}s / wall time.",
             "",
             "Samplers: " + "; ".join(f"`{k}` = {v}" for k, v in SAMPLERS.items() if k in
                                      {r["name"] for r in report["rows"]}) + ".",
             "",
             "| sampler | steps | forward passes | wall (s) | tokens/s | gen-PPL ↓ | unigram entropy "
             "| real words % ↑ |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        lines.append(f"| {r['name']} | {r['steps']} | {r['forward_passes']} | {r['wall_s']:.2f} | "
                     f"{r['tokens_per_s']:,.0f} | {r['gen_ppl']:.2f} | {r['unigram_entropy']:.3f} | "
                     f"{percent(r.get('real_word_rate'), r.get('real_word_rate_se'))} |")
    lines.append(f"| {ref['name']} | – | – | – | – | {ref['gen_ppl']:.2f} | {ref['unigram_entropy']:.3f} | "
                 f"{percent(ref.get('real_word_rate'), ref.get('real_word_rate_se'))} |")
    m = report["machine"]
    lines += ["", f"Machine: {m.get('gpu', m['processor'])}, {m['threads']} threads, PyTorch {m['torch']}, "
              f"{m['date']}.", "", END]
    return "\n".join(lines)


def update_markdown(path: Path, table: str) -> None:
    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + table + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n## Samplers (`bench/sampling.py`)\n\n" + table + "\n"
    atomic_write_text(path, text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--diffusion", required=True, help="diffusion run folder")
    p.add_argument("--ar", required=True, help="its AR twin (the baseline and the gen-PPL judge)")
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--steps", type=lambda s: [int(x) for x in s.split(",")], default=[8, 16, 32, 64, 128, 256])
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--samplers", help=f"comma-separated subset of: {', '.join(SAMPLERS)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default="bench/results/sampling.json")
    p.add_argument("--markdown", help="replace (or append) the sampler table in this Markdown file")
    p.add_argument("--reuse", action="store_true",
                   help="keep the rows already in --out (same settings) and run only the missing ones")
    args = p.parse_args()
    report = run(args)
    atomic_write_json(Path(args.out), report)
    table = markdown_table(report)
    print(table)
    if args.markdown:
        update_markdown(Path(args.markdown), table)
    print(f"written to {args.out}" + (f" and {args.markdown}" if args.markdown else ""))


if __name__ == "__main__":
    main()
