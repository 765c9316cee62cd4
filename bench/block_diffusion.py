"""Block diffusion's frontier: likelihood against block size, and quality against speed for every sampler.

    python bench/block_diffusion.py --bd3 runs/bd3-b1 runs/bd3-b4 runs/bd3-b16 --mdlm runs/mdlm --ar runs/ar \\
        --samples 64 --json runs/block_diffusion.json --markdown docs/block-diffusion.md \\
        --plot docs/images/block-diffusion-frontier.png

Three tables, each row measured here, on this machine, in one run of this script:

1. **Likelihood**: every run's figure on the validation split with `dlm eval`'s estimator (the
   block NELBO for bd3 runs, the NELBO for MDLM, the exact NLL for the AR twin), its Monte-Carlo and
   over-windows standard errors, and the run's training steps. `--eval-json RUN=FILE` reuses a
   `dlm eval --json` file of that run instead of computing the figure again.
2. **Samples and speed**: `--samples` unconditional samples of `--length` tokens (characters, for a character
   run) from each sampler setting of each model (block models: tokens committed per step, threshold decoding, and
   self-speculative decoding for models with a next-token clean copy; MDLM: its default sampler;
   the AR twin with its KV cache), judged as in
   bench/default_sampler.py: real-word rate, whole-text MAUVE with its interval, gen-PPL under the
   AR twin and under an independent pretrained judge, unigram entropy, self-BLEU. Speed: generated
   characters per second at batch 1 (`--speed-samples` single samples, seeds 0, 1, …) and at batch 32
   (`--speed-batches` batches), the samplers taking turns sample by sample and batch by batch, so that
   a slow minute of a shared machine falls on all of them alike, each with its wall time. (The batch-32
   figure used to be the judged samples' own wall time, each sampler's in one stretch; a drift of the
   machine between stretches then showed up as a difference between samplers.)
3. **The verdict**: each row against the AR twin by the "within reach" rule of
   bench/default_sampler.py, and its speed as a multiple of the twin's at batch 1 and 32.
   `--more-ar LABEL=RUN` adds another AR run (say the twin's recipe with fewer layers): sampled, judged and
   timed in the same turns, its row says whether it is within reach of the twin, and a line under the table
   gives every other row's speed against it, so a faster AR model of the same quality is not left out.

`--dtype fp32` runs every model in fp32 (the twin is fastest so at batch 1 on some CPUs: run both).
Self-speculative rows come with no drafts (the clean copy writes alone) and 1, 2 and 3 drafts a pass
(`--drafts`) beside the default (by batch size): their samples are the same text, so they differ in speed only.
`--plot` draws the quality–speed frontier (real-word rate against characters per second at
batch 1, every row a point) as a PNG.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

from default_sampler import held_out
from labels import mauve_cell, percent
from machine import run_header  # noqa: E402 (bench/ is on the path when run)
from markers import write_between_markers
from within_reach import shortfalls

from dlm.data.loader import eval_windows
from dlm.data.shards import prepare_corpus
from dlm.errors import DlmError
from dlm.eval.characters import add_per_char, window_characters, written_characters
from dlm.eval.generation_eval import draw_samples, evaluate_generation, run_word_list, sample_texts
from dlm.eval.likelihood import evaluate_likelihood
from dlm.inference import load
from dlm.io import atomic_write_json

METRICS = ("real_word_rate", "mauve", "gen_ppl", "independent_gen_ppl", "unigram_entropy", "self_bleu")


def block_settings(block: int, length: int, drafts_itself: bool = False) -> dict[str, dict]:
    """Sampler settings of a block model: tokens committed per step (steps per block), then
    threshold decoding at one token per step at least (confidence order), and self-speculative
    decoding for a model whose clean copy learnt next-token prediction (`drafts_itself`)."""
    blocks = length // block
    settings = {}
    for per_step in (1, 2, 4, 8):
        if per_step <= block:
            name = f"{per_step} token{'s' * (per_step > 1)}/step"
            # random order, temperature 0.8, named: a block run's own default is threshold or speculative decoding
            steps = {"steps": blocks * max(1, block // per_step), "sampler": "random"}
            settings[name] = steps
            settings[f"{name}, temperature 1"] = {**steps, "temperature": 1.0}
    if block > 1 and drafts_itself:  # the clean copy's next-token distribution, drafted a block at a time
        settings["speculative"] = {"steps": length, "speculative": True, "temperature": 1.0}
        for drafts in range(0, min(block, 4)):  # beside the default's (by batch size): the same text, other speeds
            name = f"speculative, {drafts or 'no'} draft{'s' * (drafts != 1)}"
            settings[name] = {**settings["speculative"], "drafts": drafts}
    if block > 1:
        for threshold in (0.9, 0.7):
            settings[f"threshold {threshold}"] = {"steps": length, "sampler": "confidence", "threshold": threshold}
            settings[f"threshold {threshold}, temperature 1"] = {"steps": length, "sampler": "confidence",
                                                                 "threshold": threshold, "temperature": 1.0}
    return settings


def training_steps(run: str) -> int | None:
    log, step = Path(run) / "log.jsonl", None
    if log.is_file():
        for line in log.read_text().splitlines():
            try:
                step = json.loads(line).get("step", step)
            except json.JSONDecodeError:
                continue
    return step


def likelihood(run: str, pipe, reuse: dict[str, str], args: argparse.Namespace) -> dict:
    if run in reuse:
        figures = json.loads(Path(reuse[run]).read_text())
        return {**figures, "source": f"dlm eval --json {reuse[run]}"}
    corpus = prepare_corpus(pipe.config.data, tokenizer=pipe.tokenizer)
    windows = eval_windows(corpus.split("val"), pipe.config.model.block_size)
    figures = evaluate_likelihood(pipe.model, windows, pipe.tokenizer.special, causal=pipe.is_autoregressive,
                                  block=pipe.diffusion_block, device=pipe.device, dtype=pipe.dtype,
                                  seed=0, progress=False)
    add_per_char(figures, window_characters(windows, pipe.tokenizer))  # what BPE and character runs share
    return {**figures, "source": "computed here (dlm eval's estimator, seed 0)"}


def per_char(figures: dict, key: str) -> float:
    """A likelihood figure in nats/char: a BPE run's per-character key, a character run's per-token one."""
    return figures.get(f"{key}_per_char" if key != "nats_per_token" else "nats_per_char", figures.get(key, 0.0))


def likelihood_order(name: str) -> tuple[int, str]:
    """Block models by block size, then MDLM, then the AR twin."""
    if name.startswith("block "):
        return int(name.split()[1]), name
    return (10**6 if name == "MDLM" else 10**7), name


def speeds(samplers: dict[str, tuple[object, dict]], args: argparse.Namespace, batch: int,
           repeats: int) -> dict[str, dict]:
    """Characters per second at `batch`, the samplers taking turns (one sample or batch each, seed by seed)
    so that a slower or faster stretch of a shared machine falls on all of them alike."""
    turns: dict[str, list[tuple[float, int]]] = {name: [] for name in samplers}
    for turn in range(repeats):
        for name, (pipe, options) in samplers.items():
            started = time.perf_counter()
            result = pipe.sample("", length=args.length, seed=turn * batch, num_samples=batch, **options)
            turns[name].append((time.perf_counter() - started,
                                 written_characters(pipe.tokenizer, result.tokens, result.generated)))
    key = f"batch{batch}"
    return {name: {f"{key}_chars_per_s": sum(t for _, t in timed) / sum(w for w, _ in timed),
                   f"{key}_wall_s": sum(w for w, _ in timed), f"{key}_samples": repeats * batch,
                   f"{key}_turn_chars_per_s": [t / w for w, t in timed]}
            for name, timed in turns.items()}


def turn_ratios(row: dict, ar: dict, key: str) -> list[float]:
    """Each turn's characters a second over the AR twin's in the same turn: how much of a ratio is the machine's
    mood (a shared CPU has slower and faster minutes) rather than the samplers'."""
    mine, theirs = row.get(f"{key}_turn_chars_per_s"), ar.get(f"{key}_turn_chars_per_s")
    return [a / b for a, b in zip(mine, theirs, strict=True)] if mine and theirs else []


def same_text_timed(pipe, options: dict, steps: int, judged: dict, common: dict) -> dict:
    """A self-speculative row that differs from a judged one in its drafts only: its samples are the same
    text (drafts are a speed setting), so they are drawn, timed and checked against the judged row's
    texts, and the judgement is copied."""
    samples, _, wall = draw_samples(pipe, common["num_samples"], common["length"], steps, common["batch_size"],
                                    common["seed"], options)
    texts = sample_texts(pipe, samples)
    if texts != judged["texts"]:
        raise SystemExit("block_diffusion: the drafts changed the text (they must not): a bug in the sampler")
    return {**judged, **options, "wall_s": wall, "tokens_per_s": len(texts) * common["length"] / wall,
            "chars_per_s": sum(map(len, texts)) / wall,
            "same_text_as": judged["name"]}


def measure(name: str, pipe, options: dict, common: dict, args: argparse.Namespace,
            judged: dict[tuple, dict]) -> dict:
    steps = options.pop("steps", args.length)
    if args.top_p < 1.0:
        options["top_p"] = args.top_p
    key = (id(pipe), json.dumps({k: v for k, v in options.items() if k != "drafts"}, sort_keys=True))
    if options.get("speculative") and key in judged:
        common.pop("split")
        row = same_text_timed(pipe, options, steps, judged[key], common)
    else:
        row = evaluate_generation(pipe, common.pop("split"), steps=steps, sampler_options=options, **common)
        row["name"] = name
        row["chars_per_s"] = sum(map(len, row["texts"])) / row["wall_s"]
        judged.setdefault(key, row)
    row["options"] = {"steps": steps, **options}
    shown = {k: round(row[k], 3) for k in METRICS if row.get(k) is not None}
    print(name, shown, f"{row['chars_per_s']:.0f} chars/s at batch {args.batch_size} (judged run)", flush=True)
    return row


def other_ar_name(label: str) -> str:
    """The row of an AR run given with --more-ar."""
    return f"AR ({label})"


def other_ars(report: dict, present: dict | None = None) -> list[str]:
    """The rows of the --more-ar runs, in the order given, that are in `present` (default: the report's rows)."""
    names = [other_ar_name(item.rpartition("=")[0]) for item in report["settings"].get("more_ar") or []]
    return [name for name in names if name in (report["rows"] if present is None else present)]


def verdicts(report: dict) -> None:
    ar, big = report["rows"]["AR twin"], f"batch{report['settings']['batch_size']}"
    others = other_ars(report)
    for name, row in report["rows"].items():
        missing = shortfalls(row, ar)
        row["within_reach"] = missing is not None and not missing
        row["shortfalls"] = missing or []
        for key in ("batch1", big):
            row[f"speed_vs_ar_{key}"] = row[f"{key}_chars_per_s"] / ar[f"{key}_chars_per_s"]
            ratios = turn_ratios(row, ar, key) if row is not ar else []
            if ratios:
                row[f"speed_vs_ar_{key}_turns"] = {"median": statistics.median(ratios), "min": min(ratios),
                                                   "max": max(ratios), "turns": len(ratios)}
        if others and row is not ar and name not in others:  # timed in the same turns as theirs
            row["speed_vs_other_ar"] = {
                other: {key: row[f"{key}_chars_per_s"] / report["rows"][other][f"{key}_chars_per_s"]
                        for key in ("batch1", big)} for other in others}


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [f"Command: `{report['command']}` on {report['date']} ({report['machine']}).", "",
             "#### Likelihood on the validation split (nats/char)", "",
             "| model | figure | nats/char | MC s.e. | s.e. over windows | training steps |",
             "|---|---|---:|---:|---:|---:|"]
    for name, r in report["likelihood"].items():
        kind = {"exact_nll": "exact NLL", "nelbo_bound": "NELBO (bound)"}[r["kind"]]
        se = r.get("window_standard_error")
        steps = f"{r['training_steps']:,}" if r.get("training_steps") else "—"
        se = None if se is None else per_char(r, "window_standard_error")
        lines.append(f"| {name} | {kind} | {per_char(r, 'nats_per_token'):.4f} | "
                     f"{per_char(r, 'mc_standard_error'):.4f} | {'—' if se is None else f'{se:.4f}'} | {steps} |")
    nucleus = f"; top-p {s['top_p']:g} for every row" if s.get("top_p", 1.0) < 1.0 else ""
    bs, big = s["batch_size"], f"batch{s['batch_size']}"
    timed = (f"{s['speed_batches']} batches taking turns" if "speed_batches" in s else "the samples themselves")
    lines += ["", f"#### Samples and speed ({s['samples']} samples × {s['length']} tokens{nucleus}; speed at "
              f"batch 1 over {s['speed_samples']} samples, at batch {bs} over {timed})", "",
              "| model · sampler | real words % | MAUVE (whole text) | gen-PPL (AR twin) | gen-PPL (independent) | "
              f"entropy | self-BLEU | chars/s, batch 1 | × AR | chars/s, batch {bs} | × AR | within reach |",
              "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    ref = report["reference"]
    words = percent(ref.get("real_word_rate"), ref.get("real_word_rate_se"))
    lines.append(f"| held-out text | {words} | {mauve_cell(ref)} | {ref['gen_ppl']:.2f} | "
                 f"{ref.get('independent_gen_ppl') or 0:.1f} | {ref['unigram_entropy']:.3f} | {ref['self_bleu']:.3f} "
                 "| — | — | — | — | — |")
    for name, r in report["rows"].items():
        verdict = "**yes**" if r["within_reach"] else f"no ({', '.join(r['shortfalls'])})" if r["shortfalls"] else "—"
        if name == "AR twin":
            verdict = "—"
        words = percent(r.get("real_word_rate"), r.get("real_word_rate_se"))
        if r.get("same_text_as"):
            name += " (the same text)"
        lines.append(f"| {name} | {words} | {mauve_cell(r)} | {r['gen_ppl']:.2f} | "
                     f"{r.get('independent_gen_ppl') or 0:.1f} | {r['unigram_entropy']:.3f} | {r['self_bleu']:.3f} | "
                     f"{r['batch1_chars_per_s']:,.0f} | {ratio_cell(r, 'batch1')} | "
                     f"{r[f'{big}_chars_per_s']:,.0f} | {ratio_cell(r, big)} | {verdict} |")
    if any(f"speed_vs_ar_{key}_turns" in r for r in report["rows"].values() for key in ("batch1", big)):
        lines += ["", "× AR: characters a second over the AR twin's, all turns together; in brackets the lowest and "
                  "highest ratio of a single turn (the samplers take turns: a slow minute of the machine falls on "
                  "both)."]
    for other in other_ars(report):
        against = [f"{name} {r['speed_vs_other_ar'][other]['batch1']:.2f}× at batch 1, "
                   f"{r['speed_vs_other_ar'][other][big]:.2f}× at batch {bs}"
                   for name, r in report["rows"].items() if other in r.get("speed_vs_other_ar", {})]
        lines += ["", f"Against {other} (characters a second over its own, all turns together): " + "; ".join(against)
                  + "."]
    return "\n".join(lines) + "\n"


def ratio_cell(row: dict, key: str) -> str:
    """'1.52' or, when the turns were recorded, '1.52 (1.41–1.63)': the turn-by-turn range beside it."""
    cell, turns = f"{row[f'speed_vs_ar_{key}']:.2f}", row.get(f"speed_vs_ar_{key}_turns")
    return f"{cell} ({turns['min']:.2f}–{turns['max']:.2f})" if turns and turns["turns"] > 1 else cell


def plot(report: dict, path: str) -> None:
    from dlm.viz.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in report["rows"].items():
        model = name.split(" · ")[0]
        marker = "s" if model.startswith("AR ") else {"MDLM": "^"}.get(model, "o")  # AR runs: squares
        ax.scatter(r["batch1_chars_per_s"], 100 * r["real_word_rate"], marker=marker, label=name, s=28)
    ax.axhline(100 * report["reference"]["real_word_rate"], color="grey", linestyle=":", label="held-out text")
    ax.set_xscale("log")
    ax.set_xlabel("characters per second, batch 1 (log scale)")
    ax.set_ylabel("real words, % of the samples' words")
    ax.set_title(f"Quality against speed, {report['date']}")
    ax.legend(fontsize=6, ncol=2, loc="lower left")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)


def publish(report: dict, args: argparse.Namespace) -> None:
    text = markdown(report)
    print(text)
    if args.markdown:
        write_between_markers(args.markdown, "bench/block_diffusion.py", text)
    if args.plot:
        plot(report, args.plot)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bd3", nargs="+", default=[], metavar="[LABEL=]RUN",
                        help="block-diffusion runs (any block sizes); LABEL tells two runs of one block size apart")
    parser.add_argument("--mdlm", help="the MDLM run (the B = context endpoint)")
    parser.add_argument("--ar", help="the AR twin (the B = 1 endpoint with its KV cache; required)")
    parser.add_argument("--more-ar", action="append", default=[], metavar="LABEL=RUN",
                        help="another AR run, sampled, judged and timed beside the twin (for example the twin's recipe "
                        "at another size): its row says whether it is within reach of the twin, and the table says "
                        "how fast every block row is against it too")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--speed-samples", type=int, default=4, help="single samples timed at batch 1")
    parser.add_argument("--speed-batches", type=int, default=2, help="batches of --batch-size timed")
    parser.add_argument("--settings", help="';'-separated subset of the block samplers' setting names")
    parser.add_argument("--quality-blocks", type=int, nargs="*",
                        help="block sizes whose samples are judged (default: every bd3 run's)")
    parser.add_argument("--eval-json", action="append", default=[], metavar="RUN=FILE",
                        help="reuse this `dlm eval --json` file for RUN's likelihood")
    parser.add_argument("--independent-judge", default="smollm2", help="as in bench/default_sampler.py; 'none' skips")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0,
                        help="nucleus sampling for every row, the AR twin's included (default 1: off)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp32"),
                        help="every model's inference precision (auto: dlm's default, fp32 on a CPU since 2026-12-05, "
                        "bf16 on CUDA; it was bf16 on CPUs with bf16 units before)")
    parser.add_argument("--json", default="bench/results/block_diffusion.json")
    parser.add_argument("--markdown", help="write the tables between the bench/block_diffusion.py markers")
    parser.add_argument("--plot", help="write the quality–speed frontier here (PNG)")
    parser.add_argument("--from-json", metavar="FILE", help="no measuring: print (and --markdown, --plot) a report")
    parser.add_argument("--add-likelihood", action="store_true",
                        help="with --from-json: add the --bd3 runs' likelihood rows (from --eval-json files or "
                        "computed) to that report, save it, then publish; no samples are drawn")
    args = parser.parse_args()
    if not 0.0 < args.top_p <= 1.0:
        parser.error(f"--top-p {args.top_p}: give a probability in (0, 1] (1 = off)")
    if args.speed_samples < 1 or args.speed_batches < 1:
        parser.error("--speed-samples and --speed-batches must be at least 1")

    def open_run(run: str):
        """The run's pipeline, or a one-line error naming what is wrong with it (a missing folder, a bad checkpoint)."""
        try:
            return load(run, dtype=args.dtype)
        except DlmError as e:
            parser.error(str(e))

    if args.from_json:
        report = json.loads(Path(args.from_json).read_text())
        if args.add_likelihood:
            reuse = dict(item.split("=", 1) for item in args.eval_json)
            for item in args.bd3:
                label, _, run = item.rpartition("=")
                pipe = open_run(run)
                name = f"block {pipe.diffusion_block}" + (f" ({label})" if label else "")
                report["likelihood"][name] = {**likelihood(run, pipe, reuse, args), "run": run,
                                              "training_steps": training_steps(run)}
            ordered = sorted(report["likelihood"].items(), key=lambda kv: likelihood_order(kv[0]))
            report["likelihood"] = dict(ordered)
            report["command"] += " # likelihood rows added by: python bench/block_diffusion.py " + shlex.join(
                sys.argv[1:])
            atomic_write_json(Path(args.from_json), report)
        publish(report, args)
        return 0
    if not args.ar:
        parser.error("--ar is required (the twin every row is compared with)")
    reuse = dict(item.split("=", 1) for item in args.eval_json)
    ar = open_run(args.ar)
    corpus = prepare_corpus(ar.config.data, tokenizer=ar.tokenizer)
    split, words = corpus.split("val"), run_word_list(ar, corpus.split("train"))
    independent = None if args.independent_judge == "none" else args.independent_judge

    models: dict[str, tuple[str, object]] = {}
    for item in args.bd3:
        label, _, run = item.rpartition("=")
        pipe = open_run(run)
        if not pipe.diffusion_block:
            parser.error(f"{run} is not a block-diffusion run (train.objective=bd3)")
        models[f"block {pipe.diffusion_block}" + (f" ({label})" if label else "")] = (run, pipe)
    if args.mdlm:
        models["MDLM"] = (args.mdlm, open_run(args.mdlm))
    models["AR twin"] = (args.ar, ar)
    for item in args.more_ar:
        label, _, run = item.rpartition("=")
        if not label:
            parser.error(f"--more-ar {item}: give LABEL=RUN (the label names its row)")
        pipe = open_run(run)
        if not pipe.is_autoregressive:
            parser.error(f"--more-ar {item}: {run} is not an AR run (train.objective=ar)")
        models[other_ar_name(label)] = (run, pipe)

    report: dict = {"settings": vars(args), **run_header("block_diffusion.py"), "likelihood": {}, "rows": {}}
    for name, (run, pipe) in models.items():
        report["likelihood"][name] = {**likelihood(run, pipe, reuse, args), "run": run,
                                      "training_steps": training_steps(run)}
        print(name, f"{per_char(report['likelihood'][name], 'nats_per_token'):.4f} nats/char", flush=True)

    def common() -> dict:
        return {"split": split, "num_samples": args.samples, "length": args.length, "batch_size": args.batch_size,
                "seed": args.seed, "judge": args.ar, "mauve": True, "words": words,
                "independent_judge": independent}

    report["reference"] = held_out(ar, split, words, args, independent)
    samplers = {"AR twin": (ar, {})}
    samplers.update({name: (models[name][1], {}) for name in other_ars(report, models)})
    if args.mdlm:
        samplers["MDLM · default sampler"] = (models["MDLM"][1], {})
    chosen = [n.strip() for n in args.settings.split(";")] if args.settings else None
    for name, (_, pipe) in models.items():
        if not name.startswith("block ") or (args.quality_blocks and pipe.diffusion_block not in args.quality_blocks):
            continue
        for setting, options in block_settings(pipe.diffusion_block, args.length, pipe.drafts_itself).items():
            if chosen is None or setting in chosen:
                samplers[f"{name} · {setting}"] = (pipe, options)
    judged: dict[tuple, dict] = {}
    for name, (pipe, options) in samplers.items():
        report["rows"][name] = measure(name, pipe, dict(options), common(), args, judged)
    nucleus = {"top_p": args.top_p} if args.top_p < 1.0 else {}
    timed = {name: (pipe, {"steps": args.length, **options, **nucleus}) for name, (pipe, options) in samplers.items()}
    for batch, repeats in ((1, args.speed_samples), (args.batch_size, args.speed_batches)):
        for name, speed in speeds(timed, args, batch, repeats).items():
            report["rows"][name].update(speed)
            print(name, f"{speed[f'batch{batch}_chars_per_s']:.0f} chars/s at batch {batch}", flush=True)
    verdicts(report)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(args.json), report)
    publish(report, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
