"""The `dlm` command: train, sample, eval, report, presets. Each subcommand parses flags and calls one function."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from dlm import __version__
from dlm.errors import DlmError
from dlm.sampling.flags import add_sampler_flags

EPILOG_TRAIN = """examples:
  dlm train                                        # default preset on Tiny Shakespeare
  dlm train --preset shakespeare-char-cpu --max-time 600 --out runs/mdlm
  dlm train --objective ar --out runs/ar           # the autoregressive twin
  dlm train --out runs/mdlm --resume max_steps=20000
  dlm train --data my_corpus/ tokenizer=bpe vocab_size=4096 n_layer=8 lr=6e-4

key=value overrides any config field, dotted (train.lr=3e-4) or bare when unique (lr=3e-4);
`dlm presets --show NAME` lists every field with its default."""


EPILOG_SAMPLE = """examples:
  dlm sample --ckpt runs/mdlm --prompt "ROMEO:" --length 200
  dlm sample --ckpt runs/mdlm --steps 64 --sampler margin --repetition-penalty 1.2
  dlm sample --ckpt runs/mdlm --block-length 32 --block-context prefix --kv-cache --threshold 0.9
  dlm sample --ckpt runs/mdlm --template "To be, or not to be: [MASK*30] question."
  dlm sample --ckpt runs/mdlm --steps 512 --length 256 --remask 0.05      # ReMDM: more steps than tokens
  dlm sample --ckpt runs/mdlm --prompt "ROMEO:" --prompt "JULIET:" --num-samples 2"""


def _default_preset() -> str:
    import torch

    return "shakespeare-char" if torch.cuda.is_available() else "shakespeare-char-cpu"


def cmd_train(args: argparse.Namespace) -> int:
    from dlm.config import apply_overrides
    from dlm.presets import get_preset
    from dlm.run_folder import RunFolder
    from dlm.train.trainer import train

    overrides = list(args.overrides)
    for flag, key in (("data", "data.source"), ("max_steps", "train.max_steps"), ("max_time", "train.max_time"),
                      ("objective", "train.objective"), ("compile", "train.compile")):
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    if args.wandb:
        overrides.append("train.wandb=true")
    if args.fsdp:
        overrides.append("train.fsdp=true")
    run_dir = Path(args.out) if args.out else None
    if args.resume:
        if run_dir is None:
            raise DlmError("--resume needs --out RUN_DIR (the run to continue)")
        run = RunFolder(run_dir)
        if not run.has_config():
            raise DlmError(f"cannot resume: {run.config_path} not found; check --out or train without --resume")
        cfg = run.read_config()
    else:
        cfg = get_preset(args.preset or _default_preset())
    cfg = apply_overrides(cfg, overrides)
    if run_dir is None:
        run_dir = Path("runs") / f"{cfg.preset or 'run'}-{cfg.train.objective}"
    result = train(cfg, run_dir, resume=args.resume, quiet=args.quiet)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for all
        print(f"dlm: stopped at step {result.step} ({result.stopped_by}); run saved in {result.run_dir}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from dlm.inference import load
    from dlm.sampling.flags import sampler_options

    pipe = load(args.ckpt, device=args.device, dtype=args.dtype, weights=args.weights)
    options = {**sampler_options(args), "seed": args.seed}
    if args.steps:
        options["steps"] = args.steps
    if args.edit is not None:
        print(pipe.edit(args.edit, rounds=args.edit_rounds or 4, threshold=args.edit_threshold or 0.1,
                        **{k: options[k] for k in ("seed", "temperature", "top_k", "top_p")}))
        return 0
    prompts = args.prompt or [""]
    kwargs = {"length": args.length, "num_samples": args.num_samples, "template": args.template, **options}
    result = pipe.sample(prompts, **kwargs, on_step=step_printer(pipe) if args.show_steps else None)
    texts = pipe.decode(result)
    for i, text in enumerate(texts):
        if len(texts) > 1:
            print(f"─── sample {i + 1}/{len(texts)} ───")
        print(text)
    if args.verbose:
        print(f"dlm: {result.steps} steps, {result.forward_passes} forward passes", file=sys.stderr)
    return 0


def step_printer(pipe):
    """A callback that prints the first sample's text after every step, masks shown as '_'."""
    tok = pipe.tokenizer

    def show(state) -> None:
        ids = [i for i in state.tokens[0].tolist() if i != tok.pad_id]
        text = "".join("_" if i == tok.mask_id else tok.decode([i]) for i in ids)
        print(f"[step {state.step:4d}] {text!r}")

    return show


def cmd_eval(args: argparse.Namespace) -> int:
    import dataclasses

    from dlm.data.loader import eval_windows
    from dlm.data.shards import prepare_corpus
    from dlm.eval.likelihood import evaluate_likelihood
    from dlm.inference import load
    from dlm.io import atomic_write_json
    from dlm.runtime import pick_dtype

    if args.gen:
        from dlm.eval.generation_eval import check_judge, check_sampler_options
        from dlm.sampling.flags import sampler_options as options_from_flags

        check_judge(args.judge, args.mauve)  # before the likelihood pass, which can take minutes
        check_sampler_options(options_from_flags(args))
    pipe = load(args.ckpt, device=args.device, weights=args.weights, dtype=args.dtype)
    cfg = pipe.config
    data = dataclasses.replace(cfg.data, source=args.data) if args.data else cfg.data
    corpus = prepare_corpus(data, tokenizer=pipe.tokenizer)
    windows = eval_windows(corpus.split(args.split), cfg.model.block_size)
    dtype = pick_dtype(args.dtype, pipe.device)
    tok = pipe.tokenizer
    result = evaluate_likelihood(pipe.model, windows, tok.special, causal=pipe.is_autoregressive, device=pipe.device,
                                 dtype=dtype, batch_size=args.batch_size, seed=args.seed,
                                 target_se=args.target_se, max_passes=args.max_passes,
                                 progress=not args.quiet)
    result.update({"checkpoint": str(pipe.checkpoint), "weights": pipe.weights, "split": args.split,
                   "data": data.source,
                   "tokenizer": tok.kind, "dtype": str(dtype).removeprefix("torch."),
                   "objective": "ar" if pipe.is_autoregressive else "mdlm"})
    unit = "char" if tok.kind == "char" else "token"
    label = "NLL (exact)" if pipe.is_autoregressive else "NELBO (upper bound on NLL)"
    passes = "" if pipe.is_autoregressive else f", {result['passes']} passes"
    window_se = result["window_standard_error"]  # None when the split holds a single window
    print(f"{label} on {args.split}: {result['nats_per_token']:.4f} nats/{unit} "
          f"(Monte-Carlo s.e. {result['mc_standard_error']:.4f}, s.e. over windows "
          f"{'n/a' if window_se is None else f'{window_se:.4f}'}; {result['windows']} windows × "
          f"{result['window_length']} tokens"
          f"{passes})")
    print(f"  = {result['bits_per_token']:.4f} bits/{unit}; perplexity"
          f"{'' if pipe.is_autoregressive else ' bound'} {math.exp(result['nats_per_token']):.3f}")
    if args.noise_curve and not pipe.is_autoregressive:
        from dlm.eval.likelihood import loss_by_noise_level

        curve = loss_by_noise_level(pipe.model, windows, tok.special, device=pipe.device, dtype=dtype,
                                    levels=args.noise_curve, batch_size=args.batch_size, seed=args.seed)
        result["noise_curve"] = curve
        print("  loss vs t (nats per masked token): "
              + " ".join(f"{p['t']:.2f}:{p['nll_per_masked_token']:.3f}" for p in curve))
    if args.gen:
        from dlm.eval.generation_eval import evaluate_generation, generation_summary
        sampler_options = options_from_flags(args)
        result["generation"] = evaluate_generation(
            pipe, corpus.split(args.split), num_samples=args.gen, length=args.gen_length, steps=args.gen_steps,
            batch_size=args.batch_size, seed=args.seed, judge=args.judge, mauve=args.mauve,
            sampler_options=sampler_options)
        print(f"  {generation_summary(result['generation'])}")
    if args.json:
        atomic_write_json(Path(args.json), result)
        print(f"  written to {args.json}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from dlm.viz.report import write_report

    outcome = write_report(args.runs, args.eval, Path(args.out))
    plots = f" and {len(outcome.plots)} plot(s)" if outcome.plots else ""
    print(f"dlm: report written to {outcome.report}{plots}")
    if outcome.plots_skipped:
        print(f"dlm: plots skipped: {outcome.plots_skipped}")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from dlm.presets import PRESETS, get_preset

    if args.show:
        cfg = get_preset(args.show)
        if args.json:
            print(json.dumps(cfg.to_dict(), indent=2))
        else:
            from dlm.config_docs import describe_config

            print(describe_config(cfg, f"# preset {args.show}: {(PRESETS[args.show].__doc__ or '').strip()}\n"
                                       "# (model.vocab_size and model.causal are set from the tokenizer and the "
                                       "objective)"))
        return 0
    for name, fn in PRESETS.items():
        print(f"{name:24s} {(fn.__doc__ or '').strip()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dlm", description="Masked diffusion language models and their "
                                     "autoregressive twins: train, sample, evaluate.")
    parser.add_argument("--version", action="version", version=f"dlm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a diffusion model (or its AR twin)", epilog=EPILOG_TRAIN,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", help="named config (see `dlm presets`); default shakespeare-char-cpu, "
                   "or shakespeare-char when a GPU is present")
    p.add_argument("--data", help="corpus: file, folder, glob, or 'tinyshakespeare' (default)")
    p.add_argument("--out", help="run folder for config, checkpoints and logs (default runs/PRESET-OBJECTIVE)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    p.add_argument("--max-time", type=float, help="stop (after saving) after this many seconds")
    p.add_argument("--objective", choices=("mdlm", "ar"), help="mdlm (diffusion) or ar (the causal twin)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    p.add_argument("--compile", choices=("auto", "yes", "no"),
                   help="torch.compile the model (auto: when a C++ compiler or CUDA is present)")
    p.add_argument("--fsdp", action="store_true",
                   help="under torchrun, shard the model with FSDP2 instead of DDP")
    p.add_argument("--wandb", action="store_true", help="also log to Weights & Biases (if installed)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="generate text from a trained run", epilog=EPILOG_SAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="run folder (or one checkpoint folder inside it)")
    p.add_argument("--prompt", action="append", default=None,
                   help="text the sample starts with (never changed); repeat for a batch of prompts")
    p.add_argument("--template", help="infilling: text with [MASK] or [MASK*N] gaps to fill, kept verbatim elsewhere")
    p.add_argument("--edit", metavar="TEXT", help="let an editing-trained model fix TEXT (--edit-rounds, "
                   "default 4; --edit-threshold, default 0.1)")
    p.add_argument("--length", type=int, default=256, help="tokens to generate after the prompt")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: one per generated token)")
    p.add_argument("--seed", type=int, default=0, help="sample i uses seed + i")
    p.add_argument("--num-samples", type=int, default=1, help="samples per prompt")
    p.add_argument("--show-steps", action="store_true", help="print the first sample after every step")
    p.add_argument("--verbose", action="store_true", help="report steps and forward passes")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp32"),
                   help="auto: bf16 on CUDA and CPUs with bf16 units (logits still in fp32), else fp32")
    p.add_argument("--weights", default="auto", choices=("auto", "ema", "raw"),
                   help="EMA-averaged or raw weights (auto: EMA when the checkpoint has them)")
    add_sampler_flags(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("eval", help="likelihood on a split: NELBO bound (diffusion) or exact NLL (AR)")
    p.add_argument("--ckpt", required=True, help="run folder (or one checkpoint folder inside it)")
    p.add_argument("--data", help="corpus to score (default: the run's); encoded with the run's tokenizer")
    p.add_argument("--split", default="val", choices=("val", "train"))
    p.add_argument("--json", help="also write the figures and settings to this JSON file")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target-se", type=float, default=0.01,
                   help="add passes until the Monte-Carlo standard error is below this (nats)")
    p.add_argument("--max-passes", type=int, default=200)
    p.add_argument("--noise-curve", type=int, default=0, metavar="LEVELS",
                   help="also report the loss per masked token at LEVELS noise levels (diffusion runs)")
    p.add_argument("--gen", type=int, default=0, metavar="N",
                   help="also sample N sequences and report entropy, distinct-n, speed (and gen-PPL with --judge)")
    p.add_argument("--gen-length", type=int, default=0, help="tokens per sample (default: the context)")
    p.add_argument("--gen-steps", type=int, default=0, help="denoising steps (default: --gen-length)")
    p.add_argument("--judge", help="scores the samples (generative perplexity): an AR run with the same tokenizer "
                   "(per dlm token) or a local Hugging Face causal LM folder, e.g. GPT-2 (per judge token)")
    p.add_argument("--mauve", action="store_true",
                   help="with --judge: MAUVE between the samples and as many random windows of the split")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--dtype", default="fp32", choices=("auto", "bf16", "fp32"),
                   help="network precision for the likelihood and --gen sampling (logits always fp32); "
                   "auto: bf16 where supported")
    p.add_argument("--weights", default="auto", choices=("auto", "ema", "raw"),
                   help="EMA-averaged or raw weights (auto: EMA when the checkpoint has them)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_sampler_flags(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("report", help="Markdown report and plots from run folders and eval JSON files",
                       description="Tables of runs, likelihood and sample quality, and plots of loss vs step and "
                       "quality vs sampling steps, from files alone (config.json, log.jsonl, dlm eval --json).")
    p.add_argument("runs", nargs="*", metavar="RUN", help="run folders (the --out of dlm train)")
    p.add_argument("--eval", nargs="+", action="extend", default=[], metavar="FILE.json",
                   help="results of dlm eval --json (a result or a list of them); repeat or list several")
    p.add_argument("--out", default="report", help="folder for report.md and the PNG plots (default: report/)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("presets", help="list the named configs")
    p.add_argument("--show", metavar="NAME", help="print every field of one preset: its value and what it means")
    p.add_argument("--json", action="store_true", help="with --show: the config as JSON instead")
    p.set_defaults(func=cmd_presets)
    return parser


def main(argv: list[str] | None = None) -> int:
    import warnings

    warnings.formatwarning = lambda message, *args, **kwargs: f"dlm: warning: {message}\n"
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come between flags (argparse takes only one run of positionals).
    if extra and args.command == "train" and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except DlmError as e:
        print(f"dlm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dlm: interrupted", file=sys.stderr)
        return 130
