"""A pretrained causal LM made a diffusion model (`dlm adapt`), measured against the LM it came from.

    python bench/adapted_lm.py --chat runs/smollm2-chat --text runs/smollm2-adapt \\
        --text 'random weights=runs/smollm2-scratch' --json runs/adapted_lm.json --markdown docs/pretrained.md

`--chat RUN` (a run of `dlm adapt MODEL --chat`), on questions about topics the training
questions (dlm.data.distill) never name, answered by the teacher (the instruct LM the run started
from, sampled as distill samples it):
1. held-out reply likelihood, nats per reply token with standard errors over replies: the teacher's
   exact NLL of its own replies, the diffusion bound before adaptation (the teacher's weights with
   attention opened and [MASK] added, nothing trained) and after (dlm.eval.chat_likelihood);
2. reply length (characters, words) and real-word rate, the student's replies (`Pipeline.chat`,
   the run's default sampler) against the teacher's; words are checked against the web2 word list
   (`pip install english-words`, MIT) joined with the words of the run's training conversations;
3. transcripts of the first --transcripts questions.

`--text RUN` (repeatable, `[LABEL=]RUN` of `dlm adapt MODEL`): continuations of held-out passages of
the run's corpus (its validation split), with their real-word rate against the corpus's training
words. For the first text run, characters per second at batch 1 and 8: the diffusion model at a
few step counts against the original LM with its KV cache (`generate`, the same number of new
tokens), both in --dtype.

Every figure goes to --json and, between this script's markers, to --markdown.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from machine import describe_cpu
from markers import write_between_markers

from dlm.data.chat import ChatTemplate
from dlm.eval.chat_likelihood import reply_nll
from dlm.eval.words import real_word_rate, word_list_from_text, words_of
from dlm.inference import Pipeline, load
from dlm.io import atomic_write_json

# Topics that dlm.data.distill.TOPICS does not name, asked in its question forms.
HELDOUT_TOPICS = (
    "a lighthouse", "ice cream", "a thunderstorm", "the desert", "a violin", "chess", "a wooden bridge",
    "autumn leaves", "a bakery", "the harbour", "kites", "a campfire", "soup", "a train station", "owls",
    "a clock", "fishing", "a hot bath", "sunflowers", "an old map shop",
)


def heldout_questions(n: int, seed: int) -> list[str]:
    from dlm.data.distill import FORMS, TOPICS

    assert not set(HELDOUT_TOPICS) & set(TOPICS)
    rng = random.Random(seed)
    questions = [form.format(topic) for topic in HELDOUT_TOPICS for form in rng.sample(FORMS, 2)]
    rng.shuffle(questions)
    return questions[:n]


def teacher_folder(pipe: Pipeline) -> Path:
    return Path(pipe.config.model.backbone.removeprefix("hf:"))


def teacher_replies(folder: Path, questions: list[str], cache: Path, seed: int) -> list[list[dict]]:
    """The teacher's replies to the questions, sampled as dlm.data.distill samples (cached in `cache`)."""
    from dlm.data.distill import write_replies

    if cache.is_file():
        rows = [json.loads(line)["messages"] for line in cache.read_text(encoding="utf-8").splitlines()]
        if [r[0]["content"] for r in rows] == questions[:len(rows)]:
            return rows
    rows = write_replies(folder, questions, max_new_tokens=64, seed=seed, batch_size=16, progress=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text("".join(json.dumps({"messages": r}) + "\n" for r in rows), encoding="utf-8")
    return rows


@torch.no_grad()
def teacher_nll(folder: Path, examples) -> dict:
    """The teacher's exact NLL of each reply (and its end-of-turn token) after its prompt."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    per_token, nats, tokens = [], 0.0, 0
    for e in examples:
        ids = torch.tensor([e.ids])
        logp = model(input_ids=ids[:, :-1]).logits.float().log_softmax(-1)[0]
        target = ids[0, 1:]
        nll = -logp.gather(-1, target[:, None]).squeeze(-1)[e.prompt_len - 1:]
        per_token.append(float(nll.mean()))
        nats, tokens = nats + float(nll.sum()), tokens + len(nll)
    return {"kind": "exact_nll", "nats_per_reply_token": nats / tokens,
            "standard_error": float(np.std(per_token, ddof=1) / math.sqrt(len(examples))),
            "examples": len(examples), "reply_tokens": tokens}


def before_adaptation(run: str, dtype: str) -> Pipeline:
    """The run's network as it starts: the teacher's weights, the added rows at their mean, attention open."""
    from dlm.model.hf_backbone import build_model
    from dlm.run_folder import RunFolder
    from dlm.runtime import pick_dtype

    folder = RunFolder(run)
    cfg, tokenizer = folder.read_config(), folder.read_tokenizer()
    model = build_model(cfg.model, pretrained=True)
    model.init_token_rows([tokenizer.token_to_id(t) for t in tokenizer.added_tokens])
    model.eval().fp32_logits = True
    device = torch.device("cpu")
    return Pipeline(model, tokenizer, cfg, Path(run), device, pick_dtype(dtype, device))


def lexicon(extra_text: str) -> frozenset[str]:
    try:
        from english_words import get_english_words_set
    except ImportError:
        sys.exit("bench/adapted_lm.py --chat checks words against the web2 list: pip install english-words")
    return frozenset(get_english_words_set(["web2"], lower=True)) | word_list_from_text(extra_text)


def length_row(texts: list[str], words: frozenset[str]) -> dict:
    chars = [len(t) for t in texts]
    counts = [len(words_of(t)) for t in texts]
    q = statistics.quantiles(chars, n=4) if len(chars) > 1 else [chars[0]] * 3
    return {"replies": len(texts), "mean_chars": statistics.fmean(chars), "quartiles_chars": q,
            "mean_words": statistics.fmean(counts), "empty": sum(not t.strip() for t in texts),
            **real_word_rate(texts, words)}


def chat_section(run: str, n_questions: int, n_transcripts: int, seed: int, cache_dir: Path) -> dict:
    after = load(run, device="cpu", dtype="fp32")
    questions = heldout_questions(n_questions, seed)
    folder = teacher_folder(after)
    conversations = teacher_replies(folder, questions, cache_dir / f"heldout-replies-{seed}.jsonl", seed)
    template = ChatTemplate(after.tokenizer)
    examples = [e for c in conversations for e in template.examples(c, after.config.model.block_size)]
    fill = after.config.finetune.fill
    likelihood = {"teacher (AR, exact)": teacher_nll(folder, examples),
                  "diffusion before adaptation": reply_nll(before_adaptation(run, "fp32"), examples, fill, seed=seed),
                  "diffusion after": reply_nll(after, examples, fill, seed=seed)}
    for name, row in likelihood.items():
        print(f"{name}: {row['nats_per_reply_token']:.3f} ± {row['standard_error']:.3f} nats/reply token", flush=True)
    training = Path(after.config.data.source)
    words = lexicon(training.read_text(encoding="utf-8") if training.is_file() else "")
    student = load(run, device="cpu", dtype="bf16")
    started, replies = time.perf_counter(), []
    for i, c in enumerate(conversations):
        replies.append(student.chat(c[:1], seed=seed + i))
        print(f"[{i + 1}/{len(conversations)}] {c[0]['content']} → {replies[-1]!r}", flush=True)
    seconds = time.perf_counter() - started
    teacher = [c[1]["content"] for c in conversations]
    return {"run": run, "teacher": str(folder), "questions": len(conversations), "fill": fill,
            "likelihood": likelihood,
            "lengths": {"teacher": length_row(teacher, words), "diffusion": length_row(replies, words)},
            "reply_seconds": seconds,
            "transcripts": [{"question": c[0]["content"], "diffusion": r, "teacher": t}
                            for c, r, t in list(zip(conversations, replies, teacher, strict=True))[:n_transcripts]]}


def heldout_passages(pipe: Pipeline, n: int, chars: int, seed: int) -> tuple[list[str], frozenset[str]]:
    """`n` passage openings from the validation split (each starting at a line), and the training words."""
    from dlm.data.shards import prepare_corpus

    corpus = prepare_corpus(pipe.config.data, tokenizer=pipe.tokenizer)
    val = pipe.tokenizer.decode(corpus.split("val").tolist())
    starts = [i + 1 for i, ch in enumerate(val[:-chars]) if ch == "\n" and val[i + 1:i + 2].isalpha()]
    rng = random.Random(seed)
    prompts = [val[s:s + chars].rsplit(" ", 1)[0] for s in rng.sample(starts, n)]
    return prompts, word_list_from_text(pipe.tokenizer.decode(corpus.split("train").tolist()))


def text_section(runs: dict[str, str], n: int, length: int, seed: int) -> dict:
    out = {}
    for label, run in runs.items():
        pipe = load(run, device="cpu", dtype="bf16")
        prompts, words = heldout_passages(pipe, n, 96, seed)
        texts = pipe.generate(prompts, length=length, seed=seed)
        continuations = [t[len(p):] for t, p in zip(texts, prompts, strict=True)]
        out[label] = {"run": run, "tokens": length, "samples": [{"prompt": p, "continuation": c}
                                                                 for p, c in zip(prompts, continuations, strict=True)],
                      **real_word_rate(continuations, words)}
        print(label, out[label]["real_word_rate"], continuations[0][:200], flush=True)
    return out


def speed_section(run: str, length: int, steps: list[int], seed: int, dtype: str, repeats: int) -> dict:
    import transformers

    pipe = load(run, device="cpu", dtype=dtype)
    folder = teacher_folder(pipe)
    prompts, words = heldout_passages(pipe, 8, 96, seed)
    tok = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    tok.padding_side = "left"
    ar = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True,
                                                           dtype=pipe.dtype).eval()

    def ar_generate(batch: list[str]) -> list[str]:
        enc = tok(batch, return_tensors="pt", padding=True)
        with torch.no_grad():
            ids = ar.generate(**enc, max_new_tokens=length, min_new_tokens=length, do_sample=True, temperature=1.0,
                              top_k=0, use_cache=True, pad_token_id=tok.eos_token_id)
        return tok.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    def diffusion(n_steps: int):
        def generate(batch: list[str]) -> list[str]:
            texts = pipe.generate(batch, length=length, steps=n_steps, seed=seed)
            return [t[len(p):] for t, p in zip(texts, batch, strict=True)]
        return generate

    settings = {"original LM, KV cache": ar_generate}
    settings.update({f"diffusion, {s} steps ({length // s} tokens/step)": diffusion(s) for s in steps})
    rows = {}
    for name, generate in settings.items():
        row = {}
        for batch in (1, 8):
            seconds, texts = [], []
            generate(prompts[:batch])  # warm-up, untimed: first-call allocations and kernel choices
            for r in range(repeats):
                chunk = prompts[:batch] if batch > 1 else [prompts[r % len(prompts)]]
                torch.manual_seed(seed + r)
                started = time.perf_counter()
                out = generate(chunk)
                seconds.append(time.perf_counter() - started)
                texts += out
            chars = sum(len(t) for t in texts)
            row[f"batch {batch}"] = {"chars_per_second": chars / sum(seconds), "seconds": sum(seconds),
                                     "chars": chars, **real_word_rate(texts, words)}
            print(name, batch, round(chars / sum(seconds), 1), row[f"batch {batch}"]["real_word_rate"], flush=True)
        rows[name] = row
    return {"run": run, "dtype": str(pipe.dtype).removeprefix("torch."), "new_tokens": length,
            "repeats": repeats, "rows": rows}


def markdown(report: dict) -> str:
    lines = [f"Command: `{report['command']}` on {report['date']} ({report['machine']}).", ""]
    if "chat" in report:
        c = report["chat"]
        lines += [f"**Held-out replies** ({c['questions']} questions on topics the training questions never name; "
                  f"replies by the teacher, {c['likelihood']['diffusion after']['reply_tokens']} reply tokens), "
                  f"nats per reply token, standard error over replies:", "",
                  "| model | kind | nats/reply token |", "|---|---|---:|"]
        for name, row in c["likelihood"].items():
            kind = "exact NLL" if row["kind"] == "exact_nll" else f"NELBO bound, {row['draws_per_example']} draws"
            lines.append(f"| {name} | {kind} | {row['nats_per_reply_token']:.3f} ± {row['standard_error']:.3f} |")
        lines += ["", "| replies by | mean chars | quartiles (chars) | mean words | real-word rate | empty |",
                  "|---|---:|---:|---:|---:|---:|"]
        for name, row in c["lengths"].items():
            q = " / ".join(f"{v:.0f}" for v in row["quartiles_chars"])
            rate = f"{row['real_word_rate']:.3f}" if row["real_word_rate"] is not None else "—"
            lines.append(f"| {name} | {row['mean_chars']:.0f} | {q} | {row['mean_words']:.1f} | {rate} | "
                         f"{row['empty']} |")
        lines += ["", f"Transcripts (`{c['run']}`, its default sampler; the teacher's reply below each):", ""]
        def quoted(text: str) -> str:
            return "  \n> ".join(text.strip().splitlines())

        for t in c["transcripts"]:
            lines += [f"> **user:** {t['question']}  ", f"> **dlm:** {quoted(t['diffusion'])}  ",
                      f"> *teacher:* {quoted(t['teacher'])}", ""]
    if "text" in report:
        lines += ["**Continuations** of held-out passages (validation split; real words against the training "
                  "split's words):", "", "| model | new tokens | real-word rate | first continuation |",
                  "|---|---:|---:|---|"]
        for label, row in report["text"].items():
            first = row["samples"][0]["continuation"].replace("\n", " / ").replace("|", "\\|")
            lines.append(f"| {label} | {row['tokens']} | {row['real_word_rate']:.3f} | {first} |")
        lines.append("")
    if "speed" in report:
        s = report["speed"]
        lines += [f"**Speed** (`{s['run']}`, {s['dtype']}, {s['new_tokens']} new tokens after held-out passages, "
                  f"{s['repeats']} calls per cell), characters per second and the real-word rate of what was "
                  "written:", "", "| sampler | batch 1 | words | batch 8 | words |", "|---|---:|---:|---:|---:|"]
        base = s["rows"]["original LM, KV cache"]
        for name, row in s["rows"].items():
            cells = []
            for b in ("batch 1", "batch 8"):
                ratio = row[b]["chars_per_second"] / base[b]["chars_per_second"]
                cells.append(f"{row[b]['chars_per_second']:.0f} ({ratio:.2f}×) | {row[b]['real_word_rate']:.3f}")
            lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chat", metavar="RUN", help="a run of dlm adapt MODEL --chat")
    parser.add_argument("--text", action="append", default=[], metavar="[LABEL=]RUN", help="a run of dlm adapt MODEL")
    parser.add_argument("--questions", type=int, default=40)
    parser.add_argument("--transcripts", type=int, default=10)
    parser.add_argument("--samples", type=int, default=4, help="continuations per text run")
    parser.add_argument("--length", type=int, default=64, help="new tokens per continuation")
    parser.add_argument("--steps", default="64,32,16", help="diffusion step counts for the speed table")
    parser.add_argument("--repeats", type=int, default=4, help="calls per speed cell")
    parser.add_argument("--no-speed", action="store_true")
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"), help="dtype of the speed table")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default="runs/adapted_lm", help="where the teacher's held-out replies are kept")
    parser.add_argument("--json")
    parser.add_argument("--markdown")
    args = parser.parse_args()
    if not args.chat and not args.text:
        parser.error("give --chat RUN and/or --text RUN")
    report = {"command": "python bench/adapted_lm.py " + shlex.join(sys.argv[1:]), "date": time.strftime("%Y-%m-%d"),
              "machine": describe_cpu(), "seed": args.seed}
    if args.chat:
        report["chat"] = chat_section(args.chat, args.questions, args.transcripts, args.seed, Path(args.cache))
    if args.text:
        runs = dict((s.partition("=")[0], s.partition("=")[2]) if "=" in s else (Path(s).name, s) for s in args.text)
        report["text"] = text_section(runs, args.samples, args.length, args.seed)
        if not args.no_speed:
            report["speed"] = speed_section(next(iter(runs.values())), args.length,
                                            [int(s) for s in args.steps.split(",")], args.seed, args.dtype,
                                            args.repeats)
    text = markdown(report)
    print(text)
    if args.json:
        atomic_write_json(Path(args.json), report)
    if args.markdown:
        write_between_markers(args.markdown, "bench/adapted_lm.py", text)


if __name__ == "__main__":
    main()
