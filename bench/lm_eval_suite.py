"""A small lm-eval task suite on text the models never trained on, and dlm's models scored on it.

    python bench/lm_eval_suite.py --run 'MDLM=runs/mdlm' --run 'AR twin=runs/ar' --items 200 \
        --mc-sweep 'MDLM=runs/mdlm' --json runs/lm_eval_suite.json --markdown docs/lm-eval.md

The tasks are cut at run time from the validation split of the first run's corpus (Tiny Shakespeare
for the README's runs: the last 10 %, which no run trains on) and written as lm-eval YAML and JSON
files into --tasks-dir; nothing of the text is committed. Items are drawn with a fixed seed:

* `heldout_continuation` (multiple choice, 4 options): 96 characters of text, then which of four
  24-character pieces follows it — the true one, or one of three pieces cut from elsewhere in the
  split. Chance is 25 %.
* `heldout_next_word` (multiple choice, 4 options, a cloze): a passage up to a word boundary, then
  which of four words comes next — the true one, or three other words of the split of the same
  length. Chance is 25 %.
* `heldout_rolling` (loglikelihood_rolling): whole 512-character passages; bits per byte.

Each run is scored through `dlm.eval.lm_harness.DlmLM` and lm-eval's `simple_evaluate`: accuracy
(acc and length-normalised acc_norm) with lm-eval's standard error over items, bits per byte, and
the seconds each task took on this machine. `--mc-sweep` repeats the multiple-choice tasks for one
diffusion run at 2, 4, 8, …, --max-mc-samples Monte-Carlo samples per request: how many a decision
needs before its accuracy stops moving. Every figure goes to --json and, between this script's
markers, to --markdown.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shlex
import sys
import time
from pathlib import Path

from machine import describe_cpu
from markers import write_between_markers

from dlm.io import atomic_write_json

MC_TASKS = ("heldout_continuation", "heldout_next_word")
TASKS = (*MC_TASKS, "heldout_rolling")


def heldout_text(run: str) -> str:
    """The validation split of the run's corpus, as text (decoded from the run's own shards)."""
    from dlm.data.shards import prepare_corpus
    from dlm.inference import load

    pipe = load(run, device="cpu", dtype="fp32")
    corpus = prepare_corpus(pipe.config.data, tokenizer=pipe.tokenizer)
    return pipe.tokenizer.decode(corpus.split("val").tolist())


def build_items(text: str, n: int, seed: int) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    continuation = []
    for _ in range(n):
        start = rng.randrange(0, len(text) - 200)
        context, truth = text[start:start + 96], text[start + 96:start + 120]
        others = [text[s:s + 24] for s in (rng.randrange(0, len(text) - 24) for _ in range(3))]
        choices = [truth, *others]
        rng.shuffle(choices)
        continuation.append({"context": context, "choices": choices, "answer": choices.index(truth)})
    words = [m for m in re.finditer(r"(?<=[ \n])[a-z]{3,9}(?=[ ,.;:!?\n])", text)]
    by_length: dict[int, list[str]] = {}
    for m in words:
        by_length.setdefault(len(m.group()), []).append(m.group())
    next_word = []
    for m in rng.sample(words, n):
        word, pool = m.group(), [w for w in set(by_length[len(m.group())]) if w != m.group()]
        if m.start() < 96 or len(pool) < 3:
            continue
        choices = [word, *rng.sample(sorted(pool), 3)]
        rng.shuffle(choices)
        next_word.append({"context": text[m.start() - 96:m.start()], "choices": choices, "answer": choices.index(word)})
    rolling = [{"text": text[s:s + 512]} for s in (rng.randrange(0, len(text) - 512) for _ in range(max(8, n // 10)))]
    return {"heldout_continuation": continuation, "heldout_next_word": next_word, "heldout_rolling": rolling}


def write_tasks(folder: Path, items: dict[str, list[dict]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in items.items():
        (folder / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
        head = (f"task: {name}\ndataset_path: json\ntest_split: train\ndataset_kwargs:\n  data_files:\n"
                f"    train: {(folder / f'{name}.jsonl').resolve()}\n")
        if name == "heldout_rolling":
            body = ("output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
                    "metric_list:\n  - metric: bits_per_byte\n")
        else:
            body = ("output_type: multiple_choice\ndoc_to_text: '{{context}}'\ndoc_to_choice: '{{choices}}'\n"
                    "doc_to_target: '{{answer}}'\ntarget_delimiter: ''\n"
                    "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")
        (folder / f"{name}.yaml").write_text(head + body, encoding="utf-8")


def score(run: str, tasks: tuple[str, ...], folder: Path, mc_samples: int, seed: int, dtype: str) -> dict:
    from dlm.eval.lm_harness import DlmLM, evaluate_tasks

    out = {}
    for task in tasks:  # one task at a time: each gets its own seconds
        model = DlmLM(run, mc_samples=mc_samples, seed=seed, dtype=dtype, progress=False)
        started = time.perf_counter()
        results = evaluate_tasks(model, [task], str(folder))
        row = {k.split(",")[0]: v for k, v in results["results"][task].items() if "," in k}
        row["seconds"] = time.perf_counter() - started
        row["requests"] = (model.standard_error_summary() or {}).get("requests")
        row["median_request_se"] = (model.standard_error_summary() or {}).get("median")
        out[task] = row
        print(run, task, {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    return {"objective": model.pipe.objective, "dtype": str(model.pipe.dtype).removeprefix("torch."),
            "mc_samples": None if model.pipe.is_autoregressive else mc_samples, "tasks": out}


def markdown(report: dict) -> str:
    lines = [f"Command: `{report['command']}` on {report['date']} ({report['machine']}).", "",
             f"Items: {report['counts']} (seed {report['seed']}), cut from the validation split of "
             f"`{report['source']}`.", "",
             "| model | objective | continuation acc | acc_norm | next-word acc | acc_norm | bits/byte (rolling) "
             "| seconds (cont. / word / rolling) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for label, row in report["runs"].items():
        t = row["tasks"]
        cells = [f"{t[k]['acc']:.3f} ± {t[k]['acc_stderr']:.3f} | {t[k]['acc_norm']:.3f}" for k in MC_TASKS]
        secs = " / ".join(f"{t[k]['seconds']:.0f}" for k in TASKS)
        kind = row["objective"] + (f", {row['mc_samples']} MC samples" if row["mc_samples"] else ", exact")
        kind += f", {row['dtype']}"
        lines.append(f"| {label} | {kind} | {cells[0]} | {cells[1]} | "
                     f"{t['heldout_rolling']['bits_per_byte']:.3f} | {secs} |")
    if report.get("sweep"):
        lines += ["", f"Monte-Carlo samples per request against accuracy ({report['sweep']['label']}):", "",
                  "| samples | continuation acc | next-word acc | median s.e. of a request (nats) | seconds |",
                  "|---:|---:|---:|---:|---:|"]
        for n, row in report["sweep"]["rows"].items():
            t = row["tasks"]
            lines.append(f"| {n} | {t[MC_TASKS[0]]['acc']:.3f} | {t[MC_TASKS[1]]['acc']:.3f} | "
                         f"{t[MC_TASKS[0]]['median_request_se']:.3f} | "
                         f"{sum(t[k]['seconds'] for k in MC_TASKS):.0f} |")
    return "\n".join(lines) + "\n"


def labelled(spec: str) -> tuple[str, str]:
    label, sep, run = spec.partition("=")
    return (label, run) if sep else (Path(spec).name, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True, metavar="[LABEL=]RUN", help="a run to score")
    parser.add_argument("--items", type=int, default=200, help="items per multiple-choice task")
    parser.add_argument("--mc-samples", type=int, default=32)
    parser.add_argument("--mc-sweep", metavar="[LABEL=]RUN", help="a diffusion run to score at 2, 4, 8, … samples")
    parser.add_argument("--max-mc-samples", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="fp32", choices=("auto", "bf16", "fp32"))
    parser.add_argument("--run-dtype", action="append", default=[], metavar="LABEL=DTYPE",
                        help="another dtype for one run (e.g. a 135M adapted model in its training dtype, bf16)")
    parser.add_argument("--reuse", metavar="JSON", help="an earlier report of this script: rows whose run and "
                        "settings (items, seed, MC samples, dtype) match are taken from it instead of rescored "
                        "(scores are deterministic for a seed)")
    parser.add_argument("--tasks-dir", default="runs/lm_eval_tasks", help="where the task files are written")
    parser.add_argument("--json")
    parser.add_argument("--markdown")
    args = parser.parse_args()
    runs = dict(labelled(s) for s in args.run)
    first = next(iter(runs.values()))
    text = heldout_text(first)
    items = build_items(text, args.items, args.seed)
    folder = Path(args.tasks_dir)
    write_tasks(folder, items)
    from dlm.inference import load

    report = {"command": "python bench/lm_eval_suite.py " + shlex.join(sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d"), "machine": describe_cpu(), "seed": args.seed,
              "source": load(first, device="cpu").config.data.source,
              "counts": {k: len(v) for k, v in items.items()}, "runs": {}}
    dtypes = dict(labelled(s) for s in args.run_dtype)
    unknown = set(dtypes) - set(runs)
    if unknown:
        parser.error(f"--run-dtype names {sorted(unknown)}, which no --run has")
    earlier = json.loads(Path(args.reuse).read_text()) if args.reuse and Path(args.reuse).exists() else {}
    same_items = earlier.get("counts") == report["counts"] and earlier.get("seed") == args.seed

    def reused(old: dict | None, run: str, dtype: str, mc_samples: int) -> dict | None:
        """An earlier row for the same run and settings, or None."""
        if not (same_items and old and old.get("run") == run and old.get("requested_dtype") == dtype):
            return None
        return old if old.get("mc_samples") in (None, mc_samples) else None

    for label, run in runs.items():
        dtype = dtypes.get(label, args.dtype)
        row = reused(earlier.get("runs", {}).get(label), run, dtype, args.mc_samples)
        if row is None:
            row = {"run": run, "requested_dtype": dtype, **score(run, TASKS, folder, args.mc_samples, args.seed, dtype)}
        report["runs"][label] = row
    if args.mc_sweep:
        label, run = labelled(args.mc_sweep)
        old_sweep = earlier.get("sweep") if (earlier.get("sweep") or {}).get("run") == run else {}
        sweep, n = {}, 2
        while n <= args.max_mc_samples:
            row = reused((old_sweep or {}).get("rows", {}).get(str(n)), run, args.dtype, n)
            sweep[n] = row or {"run": run, "requested_dtype": args.dtype,
                               **score(run, MC_TASKS, folder, n, args.seed, args.dtype)}
            n *= 2
        report["sweep"] = {"label": label, "run": run, "rows": sweep}
    text_out = markdown(report)
    print(text_out)
    if args.json:
        atomic_write_json(Path(args.json), report)
    if args.markdown:
        write_between_markers(args.markdown, "bench/lm_eval_suite.py", text_out)


if __name__ == "__main__":
    main()
