"""Chat fine-tuning, measured: what fine-tuning buys on held-out replies, and which end-of-reply remedy
makes the length of an answer follow its content.

    python bench/chat.py --base runs/mdlm --ar-base runs/ar --data tinyshakespeare --out runs/chat-bench \\
        --markdown docs/chat.md

1. Fine-tunes the diffusion base with each training fill (pad, eos, block-eos; dlm.data.chat_loader)
   and the AR twin with pad, all on the same conversations, steps and recipe (skipped when done).
2. Held-out reply likelihood before (the base with its vocabulary grown for the chat tokens) and
   after fine-tuning: the diffusion NELBO and the AR exact NLL, nats per reply token
   (dlm.eval.chat_likelihood).
3. Reply lengths on held-out cues, for each model × decoding remedy (stop at the end token alone;
   an EOS penalty; semi-autoregressive blocks that stop at the first completed end), against the
   reference replies: mean and quartiles, in characters.
4. Five transcripts of `dlm chat --once` with the chosen default.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from markers import write_between_markers

from dlm.data.chat import ChatTemplate, load_conversations, with_chat_tokens
from dlm.data.shards import prepare_corpus
from dlm.eval.chat_likelihood import reply_nll
from dlm.eval.generation_eval import run_word_list
from dlm.eval.words import real_word_rate
from dlm.inference import Pipeline, load
from dlm.io import atomic_write_json
from dlm.model.hf_backbone import build_model
from dlm.run_folder import RunFolder
from dlm.runtime import pick_dtype
from dlm.train.finetune import load_base_weights

FILLS = ("pad", "eos", "block-eos")
DECODING = {"end token": {}, "end token + EOS penalty 2": {"eos_penalty": 2.0},
            "blocks of 32, stop at the first end": {"block_length": 32}}
# The order in which a diffusion reply is committed: the chat default until now, and the measured
# default for free text (docs/study.md, "The default sampler").
SAMPLERS = {"confidence": {"sampler": "confidence", "temperature": 1.0},
            "random order 0.8": {"sampler": "random", "temperature": 0.8},
            "random order 0.7": {"sampler": "random", "temperature": 0.7},
            "confidence, top-p 0.9, repetition 1.3": {"sampler": "confidence", "temperature": 1.0, "top_p": 0.9,
                                                      "repetition_penalty": 1.3}}


def finetune(base: str, data: str, out: Path, fill: str, steps: int, extra: list[str]) -> None:
    if (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()):
        state = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
        if state.get("step", 0) >= steps:
            return
    cmd = ["dlm", "finetune", "--base", base, "--chat", "--data", data, "--out", str(out), "--fill", fill,
           "--max-steps", str(steps), "--quiet", *extra]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def before_finetuning(base: str) -> Pipeline:
    """The base model with its vocabulary grown for the chat tokens and nothing else changed."""
    run = RunFolder(base)
    cfg = run.read_config()
    tokenizer = with_chat_tokens(run.read_tokenizer())
    cfg.model.vocab_size = tokenizer.vocab_size
    model = build_model(cfg.model)
    load_base_weights(model, base)
    model.eval().fp32_logits = True
    return Pipeline(model, tokenizer, cfg, Path(base), torch.device("cpu"), pick_dtype("fp32", torch.device("cpu")))


def replies(pipe: Pipeline, conversations: list[list[dict]], options: dict, seed: int) -> list[str]:
    """The model's reply to each conversation's last cue (its reference reply left out)."""
    return [pipe.chat(conversation[:-1], seed=seed + i, **options) for i, conversation in enumerate(conversations)]


def reply_row(texts: list[str], words) -> dict:
    """Length quartiles of the replies and the share of their words that are real words."""
    return {**quartiles([len(t) for t in texts]), "real_word_rate": real_word_rate(texts, words)["real_word_rate"],
            "replies": texts}


def quartiles(values) -> dict:
    values = np.asarray(values, dtype=float)
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return {"mean": float(values.mean()), "q1": float(q1), "median": float(median), "q3": float(q3),
            "n": int(len(values))}


def diffusion_models(out: Path) -> dict[str, Path]:
    """The fine-tuned diffusion runs of a bench folder, by row name."""
    return {f"diffusion, fill={fill}": out / f"mdlm-{fill}" for fill in FILLS}


def run(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    extra = args.override or []
    models = diffusion_models(out)
    models = {name: path for name, path in models.items() if name.split("fill=")[1] in args.fills}
    for fill in args.fills:
        finetune(args.base, args.data, models[f"diffusion, fill={fill}"], fill, args.steps, extra)
    if args.ar_base:
        models["AR twin, fill=pad"] = out / "ar-pad"
        finetune(args.ar_base, args.data, models["AR twin, fill=pad"], "pad", args.steps, extra)
    report: dict = {"settings": vars(args), "command": shlex.join(sys.argv[1:]), "date": time.strftime("%Y-%m-%d"),
                    "likelihood": {}, "lengths": {}}
    _, held, kind = load_conversations(args.data)
    report["data"] = kind
    pipes = {name: load(path, dtype="fp32") for name, path in models.items()}
    template = ChatTemplate(next(iter(pipes.values())).tokenizer)
    block = next(iter(pipes.values())).model.cfg.block_size
    examples = [e for c in held for e in template.examples(c, block)]
    rng = random.Random(args.seed)
    examples = rng.sample(examples, min(args.examples, len(examples)))
    bases = {"diffusion": args.base, **({"AR twin": args.ar_base} if args.ar_base else {})}
    for name, base in bases.items():
        report["likelihood"][f"{name} before fine-tuning"] = reply_nll(before_finetuning(base), examples, "pad",
                                                                        seed=args.seed)
    for name, pipe in pipes.items():
        fill = name.split("fill=")[1]
        report["likelihood"][f"{name} after"] = reply_nll(pipe, examples, fill, seed=args.seed)
        print(f"{name}: {report['likelihood'][f'{name} after']['nats_per_reply_token']:.4f} nats/reply token",
              flush=True)
    # Cues whose reference reply fits the room fine-tuning gave replies (half the context).
    cues = [c for c in held if len(template.tokenizer.encode(c[-1]["content"])) + 1 <= block // 2]
    cues = rng.sample(cues, min(args.cues, len(cues)))
    report["cues"] = cues
    base = load(args.base, dtype="fp32")
    words = run_word_list(base, prepare_corpus(base.config.data, tokenizer=base.tokenizer).split("train"))
    report["lengths"]["reference replies"] = reply_row([c[-1]["content"] for c in cues], words)
    for name, pipe in pipes.items():
        samplers = {"": {}} if pipe.is_autoregressive else {f" · {k}": v for k, v in SAMPLERS.items()
                                                            if k in args.samplers}
        for sampler_label, sampler in samplers.items():
            for label, options in ((k, v) for k, v in DECODING.items() if k in args.decodings):
                if pipe.is_autoregressive and label != "end token":
                    continue
                key = f"{name}{sampler_label} · {label}"
                report["lengths"][key] = reply_row(replies(pipe, cues, {**options, **sampler}, args.seed), words)
                print(key, {k: v for k, v in report["lengths"][key].items() if k != "replies"}, flush=True)
    report["closest_to_reference"] = closest_to_reference(report["lengths"])
    transcripts(report, models, cues, args.transcripts_from)
    return report


def closest_to_reference(lengths: dict) -> str:
    """The diffusion row whose quartiles lie nearest the reference replies' (mean |ΔQ1|, |Δmedian|,
    |ΔQ3| in characters): the length remedy a default should use."""
    ref = lengths["reference replies"]

    def distance(q: dict) -> float:
        return float(np.mean([abs(q[k] - ref[k]) for k in ("q1", "median", "q3")]))

    rows = {k: v for k, v in lengths.items() if k.startswith("diffusion")}
    return min(rows, key=lambda k: distance(rows[k]))


def transcripts(report: dict, models: dict, cues: list, transcripts_from: str) -> None:
    chosen = models.get(transcripts_from, next(iter(models.values())))
    report["transcripts"] = []
    for conversation in cues[:5]:
        cue = conversation[-2]["content"]
        command = ["dlm", "chat", "--ckpt", str(chosen), "--once", cue, "--system", conversation[0]["content"]]
        reply = subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()
        report["transcripts"].append({"system": conversation[0]["content"], "cue": cue, "reply": reply,
                                      "reference": conversation[-1]["content"], "command": command})


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [f"Command: `python bench/chat.py {report.get('command', shlex.join(sys.argv[1:]))}` on {report['date']}. "
             f"Data: {report['data']}.",
             "", "### Held-out replies: nats per reply token (end-of-turn token included)", "",
             "| model | kind | nats/reply token | s.e. | examples | reply tokens |", "|---|---|---|---|---|---|"]
    for name, r in report["likelihood"].items():
        kind = "exact NLL" if r["kind"] == "exact_nll" else "NELBO (bound)"
        lines.append(f"| {name} | {kind} | {r['nats_per_reply_token']:.4f} | {r['standard_error']:.4f} | "
                     f"{r['examples']} | {r['reply_tokens']} |")
    lines += ["", f"### Reply length (characters) on {s['cues']} held-out cues", "",
              "| model · decoding | mean | Q1 | median | Q3 | real words % |", "|---|---|---|---|---|---:|"]
    for name, q in report["lengths"].items():
        rate = q.get("real_word_rate")  # reports written before the real-word rate: "—"
        lines.append(f"| {name} | {q['mean']:.1f} | {q['q1']:.0f} | {q['median']:.0f} | {q['q3']:.0f} | "
                     f"{'—' if rate is None else f'{100 * rate:.1f}'} |")
    if "closest_to_reference" in report:
        lines += ["", f"Closest to the reference quartiles (mean |ΔQ1|, |Δmedian|, |ΔQ3|): "
                      f"**{report['closest_to_reference']}**."]
    lines += ["", f"### Transcripts (`dlm chat --once`, {s.get('transcripts_from', 'diffusion, fill=pad')}, "
                  "the chat defaults)", ""]
    for t in report["transcripts"]:
        lines += [f"* **{t['system']}** — *cue:* {t['cue']!r}", f"  * *reply:* {t['reply']!r}",
                  f"  * *the play's own:* {t['reference']!r}"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="the diffusion run to fine-tune")
    parser.add_argument("--ar-base", help="its AR twin")
    parser.add_argument("--data", default="tinyshakespeare")
    parser.add_argument("--out", default="runs/chat-bench")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--examples", type=int, default=400, help="held-out replies scored")
    parser.add_argument("--cues", type=int, default=64, help="held-out cues answered for the length table")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--transcripts-from", default="diffusion, fill=pad")
    parser.add_argument("--override", action="append", help="key=value for every fine-tune")
    parser.add_argument("--json", default="bench/results/chat.json")
    parser.add_argument("--markdown", help="write the tables into this file between the bench/chat.py markers")
    parser.add_argument("--samplers", default=";".join(SAMPLERS),
                        help=f"';'-separated diffusion reply orders to compare, of: {'; '.join(SAMPLERS)}")
    parser.add_argument("--fills", default=",".join(FILLS), help="','-separated training fills to fine-tune")
    parser.add_argument("--decodings", default=";".join(DECODING),
                        help=f"';'-separated length remedies to compare, of: {'; '.join(DECODING)}")
    parser.add_argument("--from-json", metavar="FILE", help="no fine-tuning or measuring: print (and --markdown) "
                        "the tables of a JSON this script wrote")
    parser.add_argument("--redo-transcripts", action="store_true",
                        help="with --from-json: record the transcripts again (after changing chat defaults) and "
                        "save them into FILE")
    args = parser.parse_args()
    args.fills = [f.strip() for f in args.fills.split(",") if f.strip()]
    args.decodings = [d.strip() for d in args.decodings.split(";") if d.strip()]
    if not set(args.fills) <= set(FILLS) or not set(args.decodings) <= set(DECODING):
        parser.error(f"--fills: of {', '.join(FILLS)}; --decodings: of {'; '.join(DECODING)}")
    args.samplers = [s.strip() for s in args.samplers.split(";") if s.strip()]
    unknown = [s for s in args.samplers if s not in SAMPLERS]
    if unknown:
        parser.error(f"unknown sampler {unknown[0]!r}; choose from: {'; '.join(SAMPLERS)}")
    if args.from_json:
        report = json.loads(Path(args.from_json).read_text())
        if args.redo_transcripts:
            models = diffusion_models(Path(report["settings"]["out"]))
            transcripts(report, models, report["cues"], args.transcripts_from)
            report["settings"]["transcripts_from"] = args.transcripts_from
            atomic_write_json(Path(args.from_json), report)
    else:
        report = run(args)
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(args.json), report)
    text = markdown(report)
    print(text)
    if args.markdown:
        write_between_markers(args.markdown, "bench/chat.py", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
