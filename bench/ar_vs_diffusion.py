"""The diffusion-vs-autoregressive report: one network, two objectives, equal training compute (or time).

Trains (or takes) a masked diffusion model and its AR twin — the same Transformer, recipe, batch
and number of optimizer steps, so the same training FLOPs — and writes a Markdown report with:

1. likelihood on the validation split: the diffusion NELBO (an upper bound) beside the AR twin's
   exact NLL, on the same windows, in nats/char and bits/char with standard errors;
2. sample quality vs sampling steps: gen-PPL under the AR twin, unigram entropy, real-word rate and
   whole-text MAUVE (sentence-encoder features, bootstrap interval) against held-out text, for each
   diffusion sampler and step count, the AR twin, and held-out text itself (for scale);
3. speed at equal quality: tokens/s of the AR twin (KV cache) and of the cheapest diffusion setting
   within reach of its quality (RULE below), at batch 1 and batch 32; when none is within reach, of
   the settings with the highest real-word rate (among those keeping the entropy, and overall).

    python bench/ar_vs_diffusion.py --diffusion runs/mdlm --ar runs/ar --out docs/ar-vs-diffusion.md
    python bench/ar_vs_diffusion.py --train --steps 2500 ...   # train both first (if absent)

Every figure in the report is printed with the command that produced it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import within_reach  # noqa: E402
from labels import (
    encoder_label,
    mauve_cell,
    mauve_label,
    network_dtype,
    percent,
    temperature_label,
    unit_of,
    weights_label,
)
from machine import describe_cpu  # noqa: E402 (bench/ is on the path when run)

from dlm.data.loader import RandomWindows, eval_windows
from dlm.data.shards import prepare_corpus
from dlm.eval.generation_eval import evaluate_generation, run_word_list, word_figures
from dlm.eval.likelihood import evaluate_likelihood
from dlm.inference import load
from dlm.io import atomic_write_json, atomic_write_text

SAMPLERS = {"random (the default)": {"sampler": "random"},
            "random+blocks32+prefix-cache": {"sampler": "random", "block_length": 32, "block_context": "prefix",
                                             "kv_cache": True},
            "confidence": {"sampler": "confidence"}, "ancestral": {"sampler": "ancestral"},
            "confidence+rep1.2": {"sampler": "confidence", "repetition_penalty": 1.2},
            "blocks32+prefix-cache": {"sampler": "confidence", "block_length": 32, "block_context": "prefix",
                                      "kv_cache": True}}


def train_if_missing(run: str, objective: str, steps: int, preset: str) -> None:
    if (Path(run) / "checkpoints").is_dir():
        return
    cmd = ["dlm", "train", "--preset", preset, "--objective", objective, "--max-steps", str(steps), "--out", run,
           "--quiet", "max_time=0"]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def training_summary(run: str) -> dict:
    logs = [json.loads(line) for line in (Path(run) / "log.jsonl").read_text().splitlines() if line.strip()]
    config = json.loads((Path(run) / "config.json").read_text())
    train_lines = [r for r in logs if "loss" in r]
    # The log writes a loss line every log_interval steps; the final step is the last line's (the stop).
    steps = max(r["step"] for r in logs if "elapsed_s" in r)
    t, m = config["train"], config["model"]
    return {"steps": steps, "tokens_seen": steps * t["batch_size"] * t.get("grad_accum", 1) * m["block_size"],
            "last_loss": train_lines[-1]["loss"], "config": config}


def likelihood(pipe, args) -> dict:
    cfg = pipe.config
    corpus = prepare_corpus(cfg.data, tokenizer=pipe.tokenizer)
    windows = eval_windows(corpus.split("val"), cfg.model.block_size)
    tok = pipe.tokenizer
    return evaluate_likelihood(pipe.model, windows, tok.special, causal=pipe.is_autoregressive, device=pipe.device,
                               block=pipe.diffusion_block,
                               dtype=torch.float32, seed=0, progress=False)


def decode(pipe, ids: torch.Tensor) -> list[str]:
    """Texts as evaluate_generation judges them: special tokens dropped, EOS kept."""
    special = set(pipe.tokenizer.special_ids) - {pipe.tokenizer.eos_id}
    return [pipe.tokenizer.decode([i for i in row if i not in special]) for row in ids.tolist()]


def held_out_reference(ar, split, words, args: argparse.Namespace) -> dict:
    """Real text through the same measures: the validation windows the rows' MAUVE compares with
    (scored by the judge, their real-word rate), and MAUVE between them and another draw of as many
    windows, on the same whole-text features (the ceiling at this sample count)."""
    from dlm.eval.judges import judge_perplexity, load_judge
    from dlm.eval.mauve import mauve_with_interval
    from dlm.eval.sample_metrics import sample_quality
    from dlm.eval.text_features import TextEncoder

    reference = RandomWindows(split, args.length, seed=args.seed).next_batch(args.samples)  # = the rows'
    other = RandomWindows(split, args.length, seed=args.seed + 1).next_batch(args.samples)
    texts = decode(ar, reference)
    encoder = TextEncoder(device=ar.device)
    scores = mauve_with_interval(encoder.features(decode(ar, other)), encoder.features(texts), seed=args.seed)
    return {**sample_quality(reference), **judge_perplexity(load_judge(args.ar, ar), reference),
            **word_figures(texts, words), **{k if k == "mauve" else f"mauve_{k}": v for k, v in scores.items()},
            "mauve_features": "encoder", **encoder.describe()}


RULE = within_reach.rule(self_bleu=False)  # section 3's equal quality: its rows have no self-BLEU


def shortfalls(row: dict, ar: dict) -> list[str] | None:
    return within_reach.shortfalls(row, ar, self_bleu=False)


def equal_quality(quality: list[dict]) -> tuple[dict, dict]:
    """(summary for the report, label → quality row) of section 3: the cheapest diffusion row (fewest
    forward passes) within reach of the AR twin (the last row); if there is none, the diffusion row
    with the highest real-word rate among those keeping the entropy, and the highest overall."""
    ar_row, diffusion_rows = quality[-1], quality[:-1]
    matched = [q for q in diffusion_rows if shortfalls(q, ar_row) == []]
    rate = lambda q: q.get("real_word_rate") or 0.0  # noqa: E731
    if matched:
        picks = {"equal quality": min(matched, key=lambda q: q["forward_passes"])}
    else:
        keeping = [q for q in diffusion_rows if "entropy" not in (shortfalls(q, ar_row) or ["entropy"])]
        picks = {"highest real-word rate keeping the entropy": max(keeping, key=rate)} if keeping else {}
        best = max(diffusion_rows, key=rate)
        if best not in picks.values():
            picks["highest real-word rate overall"] = best
    keys = ("name", "steps", "forward_passes", "gen_ppl", "unigram_entropy", "real_word_rate", "mauve")
    summary = {"rule": RULE, "reached": bool(matched), "ar": {k: ar_row.get(k) for k in keys[3:]},
               "picks": {label: {k: q.get(k) for k in keys} for label, q in picks.items()}}
    return summary, picks


def run(args: argparse.Namespace) -> dict:
    if args.train:
        train_if_missing(args.diffusion, "mdlm", args.train_steps, args.preset)
        train_if_missing(args.ar, "ar", args.train_steps, args.preset)
    diffusion, ar = load(args.diffusion), load(args.ar)
    old = json.loads(Path(args.json).read_text()) if args.reuse and Path(args.json).is_file() else {}
    report: dict = {"settings": vars(args), "date": old.get("date", time.strftime("%Y-%m-%d")),
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "processor": describe_cpu(), "device": str(diffusion.device),
                    "weights": {"diffusion": diffusion.weights, "AR twin": ar.weights},
                    "unit": unit_of(diffusion.tokenizer.kind)}
    if diffusion.device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(diffusion.device)
    report["training"] = {"diffusion": training_summary(args.diffusion), "ar": training_summary(args.ar)}
    corpus = prepare_corpus(diffusion.config.data, tokenizer=diffusion.tokenizer)
    split, words = corpus.split("val"), run_word_list(diffusion, corpus.split("train"))
    common = {"length": args.length, "judge": args.ar, "seed": args.seed}
    if "likelihood" in old:
        report["likelihood"] = old["likelihood"]
    else:
        print("likelihood ...", flush=True)
        report["likelihood"] = {"diffusion": likelihood(diffusion, args), "ar": likelihood(ar, args)}
    if "quality" in old and "reference" in old:
        quality, report["reference"] = old["quality"], old["reference"]
    else:
        print("quality vs steps ...", flush=True)
        quality = []
        for name, options in SAMPLERS.items():
            for steps in args.steps:
                r = evaluate_generation(diffusion, split, num_samples=args.samples, batch_size=args.samples,
                                        steps=steps, mauve=True, words=words, sampler_options=options, **common)
                quality.append({"name": name, **r})
                print(f"  {name} {steps}: {row_summary(r)}", flush=True)
        r = evaluate_generation(ar, split, num_samples=args.samples, batch_size=args.samples, mauve=True,
                                words=words, sampler_options={}, **common)
        quality.append({"name": "AR twin", **r})
        print(f"  AR twin: {row_summary(r)}", flush=True)
        report["reference"] = held_out_reference(ar, split, words, args)
    report["quality"] = quality
    report["equal_quality"], picks = equal_quality(quality)
    print("speed ...", flush=True)
    speed = []
    for batch, count in ((1, args.batch1_samples), (32, 32)):
        a = evaluate_generation(ar, split, num_samples=count, batch_size=batch, sampler_options={}, **common)
        row = {"batch_size": batch, "samples": count, "ar": a, "diffusion": {}}
        for label, q in picks.items():
            row["diffusion"][label] = evaluate_generation(diffusion, split, num_samples=count, batch_size=batch,
                                                          steps=q["steps"], sampler_options=SAMPLERS[q["name"]],
                                                          **common)
            print(f"  batch {batch}: {label}: diffusion {row['diffusion'][label]['tokens_per_s']:.0f} tok/s, "
                  f"AR {a['tokens_per_s']:.0f} tok/s", flush=True)
        speed.append(row)
    report["speed"] = speed
    return report


def row_summary(r: dict) -> str:
    return (f"gen-PPL {r['gen_ppl']:.2f}, entropy {r['unigram_entropy']:.3f}, real words "
            f"{percent(r.get('real_word_rate'))} %, MAUVE {mauve_cell(r)}")


def machine_text(report: dict) -> str:
    """'PyTorch 2.13, 2 CPU threads, x86_64, no GPU' from what the report recorded."""
    parts = [f"PyTorch {report['torch']}", f"{report['threads']} CPU threads"]
    if "device" in report:  # reports from before the machine was recorded say less
        parts += [report["processor"], f"GPU {report['gpu']}" if report.get("gpu") else "no GPU"]
    return ", ".join(parts)


def recipe_differences(d_cfg: dict, a_cfg: dict) -> list[str]:
    """The model, data and training fields in which the twins' configs differ (beyond what makes them twins)."""
    twins = {("model", "causal"), ("train", "objective"), ("train", "auto_size")}
    return [f"{section}.{key}" for section in ("model", "data", "train") for key in d_cfg[section]
            if (section, key) not in twins and d_cfg[section][key] != a_cfg[section].get(key)]


def training_loss_label(d_cfg: dict, a_cfg: dict, unit: str) -> str:
    """What each run's logged training loss is, by the options it trained with (docs/study.md)."""
    diffusion, input_mask = d_cfg["diffusion"], a_cfg["train"].get("ar_input_mask", 0.0)
    if diffusion.get("weighting", "elbo") == "elbo" and diffusion.get("masking", "uniform") == "uniform":
        text = f"The diffusion loss is the per-{unit} NELBO of the training batch"
    else:
        text = (f"The diffusion loss is its training objective ({diffusion.get('weighting')} weighting, "
                f"{diffusion.get('masking', 'uniform')} masking), not the NELBO")
    if input_mask:
        return text + (f"; the AR loss is its NLL with {input_mask * 100:g} % of the inputs hidden "
                       "(train.ar_input_mask), not the exact NLL of the text. Section 1's figures are")
    return text + "; the AR loss is its exact NLL. Section 1's figures are"


def reach_cell(q: dict, ar: dict) -> str:
    if q is ar:
        return "—"
    missed = shortfalls(q, ar)
    return "n/a" if missed is None else "**yes**" if not missed else f"no ({', '.join(missed)})"


def quality_section(report: dict, unit: str) -> list[str]:
    """Section 2: the quality table (with the held-out row) and the text that says what each column is."""
    s, quality, ref = report["settings"], report["quality"], report["reference"]
    dtypes = sorted({q["dtype"] for q in quality if "dtype" in q})
    encoder, clusters = encoder_label([*quality, ref]), mauve_label(quality)
    words = next((q["word_list_size"] for q in quality if "word_list_size" in q), None)
    if encoder:
        mauve_text = (f"**MAUVE (whole text)**: against {s['samples']} random validation windows of the same length "
                      f"(the same for every row), on {encoder} features of each whole text ({clusters}).")
    else:  # a report written before whole-text MAUVE
        mauve_text = (f"MAUVE: against {s['samples']} random validation windows of the same length, on the AR "
                      "twin's last-token hidden states (read it as a coarse ranking).")
    lines = [
        "## 2. Sample quality vs sampling steps",
        "",
        f"{s['samples']} unconditional samples × {s['length']} {unit}s per row (seed {s['seed']}, "
        f"{temperature_label(quality)}, {', '.join(network_dtype(x) for x in dtypes)}). **gen-PPL**: "
        f"exp(mean NLL per {unit}) of the samples under the AR twin. **Unigram entropy**: mean per-sample entropy "
        f"of the {unit} frequencies, in nats (low = repetitive; gen-PPL alone rewards repetition). **Real words**: "
        "the share of the samples' words found in the word list of the diffusion run's training split"
        + (f" ({words:,} words)" if words else "") + ", in %, ± its standard error (it sees the misspelt words "
        f"that a judge's likelihood can forgive). {mauve_text} Samplers: "
        + "; ".join(f"`{k}` = {v}" for k, v in SAMPLERS.items() if k in {q["name"] for q in quality}) + ".",
        "",
        "| sampler | steps | forward passes | gen-PPL ↓ | unigram entropy | real words % ↑ | MAUVE (whole text) ↑ | "
        "tokens/s | within reach? |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    ar = quality[-1]
    for q in quality:
        lines.append(f"| {q['name']} | {q['steps']} | {q['forward_passes']} | {q['gen_ppl']:.2f} | "
                     f"{q['unigram_entropy']:.3f} | {percent(q.get('real_word_rate'), q.get('real_word_rate_se'))} | "
                     f"{mauve_cell(q)} | {q['tokens_per_s']:,.0f} | {reach_cell(q, ar)} |")
    ceiling = mauve_cell(ref) if "mauve" in ref else f"{ref['mauve_between_real_sets']:.3f} (last-token)"
    lines += [f"| held-out text (validation windows) | – | – | {ref['gen_ppl']:.2f} | {ref['unigram_entropy']:.3f} | "
              f"{percent(ref.get('real_word_rate'), ref.get('real_word_rate_se'))} | {ceiling} | – | – |", "",
              "The last row is real text through the same measures: the validation windows the rows' MAUVE "
              f"compares with; its MAUVE is between them and another draw of {s['samples']} windows (the two "
              "draws may share some text), the ceiling at this sample count. A diffusion row is **within reach** "
              f"of the AR twin when {report['equal_quality'].get('rule', RULE)} (section 3). The gen-PPL judge "
              "is the AR twin itself, so its own samples are favoured: they are what the judge finds likely"
              + (f" (their gen-PPL, {ar['gen_ppl']:.2f}, is below that of real text)" if ar["gen_ppl"] < ref["gen_ppl"]
                 else "") + "."]
    return lines


def equal_quality_text(eq: dict) -> str:
    """Section 3's opening: the equal-quality point, or the settings compared instead (and why)."""
    if "rule" not in eq:  # a report written before the within-reach rule: gen-PPL within a tolerance
        picks = "; ".join(f"the {label}, `{q['name']}` at {q['steps']} steps (gen-PPL {q['gen_ppl']:.2f})"
                          for label, q in eq["picks"].items())
        return (f"Equal quality by gen-PPL within {eq['tolerance']:.0%} of the AR twin's ({eq['ar_gen_ppl']:.2f}) "
                f"with an entropy within 0.1 nats of it: {'reached' if eq['reached'] else 'not reached'}; "
                f"compared: {picks}.")
    ar = eq["ar"]
    twin = (f"the twin: real words {percent(ar['real_word_rate'])} %, MAUVE {ar['mauve']:.3f}, entropy "
            f"{ar['unigram_entropy']:.3f}")
    described = "; ".join(f"the {label}, `{q['name']}` at {q['steps']} steps (real words "
                          f"{percent(q['real_word_rate'])} %, MAUVE {q['mauve']:.3f}, entropy "
                          f"{q['unigram_entropy']:.3f}, gen-PPL {q['gen_ppl']:.2f})"
                          for label, q in eq["picks"].items())
    if eq["reached"]:
        return f"The cheapest diffusion setting within reach of the AR twin (when {eq['rule']}; {twin}) is {described}."
    return (f"No diffusion setting here is within reach of the AR twin (when {eq['rule']}; {twin}), so there is no "
            f"equal-quality point on this model. Speed is compared at diffusion settings of *lower* quality than "
            f"the AR twin: {described}.")


def summary(report: dict, same_steps: bool, short: str) -> list[str]:
    """The page's opening: five lines of what these figures say, drawn from the report itself (none for a
    report written before the real-word rate)."""
    tr, lk, eq = report["training"], report["likelihood"], report["equal_quality"]
    if "rule" not in eq or not all("real_word_rate" in q for q in report["quality"]):
        return []
    d, a = lk["diffusion"], lk["ar"]
    diffusion = [q for q in report["quality"] if q["name"] != "AR twin"]
    twin = next(q for q in report["quality"] if q["name"] == "AR twin")
    varied = [q for q in diffusion if abs(q["unigram_entropy"] - twin["unigram_entropy"])
              <= 0.05 * twin["unigram_entropy"]] or diffusion
    best = max(varied, key=lambda q: q.get("real_word_rate") or 0)
    budget = "equal training steps" if same_steps else (
        f"equal training time ({tr['diffusion']['steps']:,} diffusion steps, {tr['ar']['steps']:,} AR steps)")
    speeds = [(r["diffusion"][label].get("sampler", label), r["diffusion"][label]["tokens_per_s"]
               / r["ar"]["tokens_per_s"], r["batch_size"]) for r in report["speed"] for label in r["diffusion"]]
    return [
        "What is true now:",
        f"- The runs `{report['settings'].get('diffusion')}` and `{report['settings'].get('ar')}` of {report['date']}, "
        f"{budget}: the AR twin's exact NLL is {d['nats_per_token'] - a['nats_per_token']:.3f} nats/{short} below "
        f"the diffusion model's bound ({a['nats_per_token']:.3f} against {d['nats_per_token']:.3f}).",
        f"- The twin's samples: {percent(twin['real_word_rate'])} % real words, whole-text MAUVE "
        f"{twin['mauve']:.3f}; the diffusion row with the most real words among those within 5 % of its entropy, "
        f"`{best['name']}` at {best['steps']} steps, "
        f"{percent(best['real_word_rate'])} %, MAUVE {best['mauve']:.3f}, entropy {best['unigram_entropy']:.2f} "
        f"against the twin's {twin['unigram_entropy']:.2f}.",
        "- " + ("A diffusion setting is within reach of the AR twin's quality (section 3)." if eq["reached"] else
                "No diffusion setting is within reach of the AR twin's quality, so there is no equal-quality point."),
        "- Speed, diffusion ÷ AR twin (KV cache), at the settings of section 3: "
        + "; ".join(f"{ratio:.2f}× ({sampler}) at batch {batch}" for sampler, ratio, batch in speeds)
        + ": diffusion is slower at every batch size here.",
        f"- {machine_text(report)}; figures per {short} unless said; every figure has its command below.",
    ]


def render(report: dict, command: str) -> str:
    s, tr, lk = report["settings"], report["training"], report["likelihood"]
    d_cfg, a_cfg = tr["diffusion"]["config"], tr["ar"]["config"]
    m, t_cfg, data = d_cfg["model"], d_cfg["train"], d_cfg["data"]
    unit = report.get("unit") or unit_of(data["tokenizer"])
    short = "char" if unit == "character" else unit
    differ = recipe_differences(d_cfg, a_cfg)
    weights = weights_label(report.get("weights", {}))
    same_steps = tr["diffusion"]["steps"] == tr["ar"]["steps"]
    lines = [
        "# Diffusion vs autoregressive: one network, two objectives",
        "",
        *summary(report, same_steps, short),
        "",
        f"Generated by `{command}` on {report['date']} ({machine_text(report)}). "
        "Re-run the command to reproduce every figure; the JSON with all settings is written beside it."
        + (" With `--reuse`, sections 1 and 2 come from that JSON, written by the same command without "
           "`--reuse` earlier the same day, and only section 3 is measured again." if s.get("reuse") else ""),
        "",
        f"## Setup: equal training {'compute' if same_steps else 'time'}",
        "",
        f"Both models are the same Transformer ({m['n_layer']} layers × {m['n_head']} heads × {m['d_model']}, "
        f"context {m['block_size']}), trained with the same recipe{' except as noted' if differ else ''} "
        f"(preset `{d_cfg['preset']}`, batch "
        f"{t_cfg['batch_size']}, lr {t_cfg['lr']}, optimizer {t_cfg.get('optimizer', 'adamw')}) "
        + (f"for the same number of optimizer steps on `{data['source']}` ({data['tokenizer']} tokenizer), so they "
           "used the same training FLOPs." if same_steps else
           f"for the same wall-clock budget ({t_cfg.get('max_time', 0):g} s each) on "
           f"`{data['source']}` ({data['tokenizer']} tokenizer), so their step counts differ (the table): equal "
           "time, not equal FLOPs.")
        + f" The {'' if differ else 'only '}differences: the diffusion model attends both ways and "
        f"learns the MDLM objective; the AR twin is causal and learns next-{unit} prediction"
        + (f"; and their configs set {', '.join(differ)} differently." if differ else "."),
        "",
        f"| model | optimizer steps | tokens seen | last training loss (nats/{short}) |",
        "|---|---:|---:|---:|",
    ]
    for name in ("diffusion", "ar"):
        t = tr[name]
        lines.append(f"| {name} | {t['steps']:,} | {t['tokens_seen']:,} | {t['last_loss']:.3f} |")
    lines += ["", "(Training wall time is not compared: it depends on what else the machine ran. "
              f"{training_loss_label(d_cfg, a_cfg, unit)} measured on clean validation text.)"]
    d, a = lk["diffusion"], lk["ar"]
    lines += [
        "",
        "## 1. Likelihood on the validation split",
        "",
        f"The last {data['val_fraction'] * 100:g} % of `{data['source']}`, {d['windows']} windows × "
        f"{d['window_length']} {unit}s" + (f", {weights}" if weights else "") + ". "
        "The diffusion figure is the continuous-time MDLM NELBO — an upper bound on the NLL — estimated by Monte "
        f"Carlo ({d['passes']} passes); the AR figure is the exact NLL of the same {unit}s.",
        "",
        f"| model | kind | nats/{short} | bits/{short} | perplexity | Monte-Carlo s.e. | s.e. over windows |",
        "|---|---|---:|---:|---:|---:|---:|",
        f"| diffusion | NELBO (upper bound) | {d['nats_per_token']:.4f} | {d['bits_per_token']:.4f} | "
        f"≤ {d['perplexity_bound']:.3f} | {d['mc_standard_error']:.4f} | {d['window_standard_error']:.4f} |",
        f"| AR twin | exact NLL | {a['nats_per_token']:.4f} | {a['bits_per_token']:.4f} | {a['perplexity']:.3f} | "
        f"0 | {a['window_standard_error']:.4f} |",
        "",
        f"The bound is {d['nats_per_token'] - a['nats_per_token']:.3f} nats/{short} above the AR twin's NLL. A bound "
        "above an exact figure does not prove the diffusion model worse by that much (the bound may be loose), "
        "but the diffusion model's true NLL is at most its bound.",
        "",
    ]
    lines += quality_section(report, unit)
    eq = report["equal_quality"]
    lines += ["", "## 3. Speed at equal quality", "", equal_quality_text(eq)]
    lines += ["", "| batch | samples | sampler | tokens/s | forward passes | AR twin tokens/s | AR forward passes | "
              "diffusion / AR |", "|---:|---:|---|---:|---:|---:|---:|---:|"]
    for sp in report["speed"]:
        aa = sp["ar"]
        for label, dd in sp["diffusion"].items():
            pick = eq["picks"][label]
            lines.append(f"| {sp['batch_size']} | {sp['samples']} | `{pick['name']}`, {pick['steps']} steps | "
                         f"{dd['tokens_per_s']:,.0f} | {dd['forward_passes']} | {aa['tokens_per_s']:,.0f} | "
                         f"{aa['forward_passes']} | {dd['tokens_per_s'] / aa['tokens_per_s']:.2f}× |")
    faster = [q for q in report["quality"][:-1] if q["tokens_per_s"] > report["quality"][-1]["tokens_per_s"]]
    lines += ["", f"Tokens/s counts generated {unit}s over the wall time of sampling (judging excluded); forward "
              f"passes are model calls for the whole batch (the AR twin: one per {unit}, with a KV cache; "
              "diffusion at batch 1 reuses the last logits when a step commits nothing).", "",
              f"In the quality table (batch {s['samples']}), "
              + (f"{len(faster)} diffusion setting(s) out-run the AR twin: "
                 + ", ".join(f"`{q['name']}` at {q['steps']} steps ({q['tokens_per_s']:,.0f} tokens/s, real words "
                             f"{percent(q.get('real_word_rate'))} %; within reach: "
                             f"{reach_cell(q, report['quality'][-1])})" for q in faster)
                 if faster else f"no diffusion setting out-runs the AR twin: with a KV cache its cost per {unit} "
                 f"is one small forward pass, while every diffusion step re-reads the whole {s['length']}-{unit} "
                 "canvas")
              + ". The sampler benchmark in [benchmarks.md](benchmarks.md) covers every sampler at 8–256 steps, "
              "including the block KV caches.", "",
              "## Reproducibility", "",
              "Within one process, sampling is a pure function of the seed (each row has its own generator; "
              "tested). Across runs of this command on this CPU the samples have differed slightly, for a cause "
              "not yet pinned down (the likelihood figures were identical): two runs gave gen-PPL 13.42 and "
              "13.55 for `confidence` at 16 steps, and MAUVE on the AR twin's last-token features (before "
              "whole-text MAUVE) 0.87 and 0.55 for the same row. Read gen-PPL to about 1 %, and MAUVE with its "
              "bootstrap interval. Timings vary by up to about 30 % "
              "between runs (the AR twin at batch 32: 2,662 to 3,528 tokens/s).", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--diffusion", default="runs/mdlm")
    p.add_argument("--ar", default="runs/ar")
    p.add_argument("--train", action="store_true", help="train the runs that do not exist yet")
    p.add_argument("--train-steps", type=int, default=2500)
    p.add_argument("--preset", default="shakespeare-char-cpu")
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--steps", type=lambda s: [int(x) for x in s.split(",")], default=[16, 64, 256])
    p.add_argument("--samples", type=int, default=64, help="samples per quality row (MAUVE needs many)")
    p.add_argument("--batch1-samples", type=int, default=4, help="samples timed one at a time")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="docs/ar-vs-diffusion.md")
    p.add_argument("--json", default="bench/results/ar_vs_diffusion.json")
    p.add_argument("--render-only", action="store_true", help="only re-write --out from --json")
    p.add_argument("--reuse", action="store_true",
                   help="take the likelihood and quality results from --json and redo only the speed section")
    args = p.parse_args()
    if args.render_only:  # re-write the Markdown from the JSON of an earlier run, measuring nothing
        report = json.loads(Path(args.json).read_text())
        s = report["settings"]
        command = report.get("command") or (f"python bench/ar_vs_diffusion.py --diffusion {s['diffusion']} "
                                            f"--ar {s['ar']} --out {s['out']}" + (" --reuse" if s.get("reuse") else ""))
    else:
        command = ("python bench/ar_vs_diffusion.py " + " ".join(sys.argv[1:])).strip()
        report = run(args)
        report["command"] = command
        atomic_write_json(Path(args.json), report)
    atomic_write_text(Path(args.out), render(report, command))
    print(f"written to {args.out}" + ("" if args.render_only else f" and {args.json}"))


if __name__ == "__main__":
    main()
