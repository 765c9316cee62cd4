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
    resume = args.resume or args.fresh_optimizer
    if resume and run_dir is None:
        raise DlmError("--resume needs --out RUN_DIR (the run to continue)")
    run = RunFolder(run_dir) if run_dir is not None else None
    if resume and run.has_config():  # continue the run with its own config (key=value may still change it)
        cfg = run.read_config()
    elif resume and run.checkpoints():
        raise DlmError(f"cannot resume: {run.config_path} is missing but {run.checkpoints_dir} is not; restore "
                       "config.json from a backup, or move the folder aside")
    else:  # nothing to resume yet: a new run, so one script serves the first submission and every requeue
        cfg = get_preset(args.preset or _default_preset())
    cfg = apply_overrides(cfg, overrides)
    if run_dir is None:
        run_dir = Path("runs") / f"{cfg.preset or 'run'}-{cfg.train.objective}"
    result = train(cfg, run_dir, resume=resume, quiet=args.quiet, fresh_optimizer=args.fresh_optimizer)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for all
        print(f"dlm: stopped at step {result.step} ({result.stopped_by}); run saved in {result.run_dir}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from dlm.inference import load
    from dlm.sampling.flags import sampler_options

    pipe = load(args.ckpt, device=args.device, dtype=args.dtype, weights=args.weights)
    options = {**sampler_options(args), "seed": args.seed}
    if args.steps is not None:
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
    if args.l2r and not pipe.is_autoregressive:
        from dlm.eval.likelihood import evaluate_left_to_right

        scored = windows[:args.l2r_windows] if args.l2r_windows else windows
        l2r = evaluate_left_to_right(pipe.model, scored, tok.special, device=pipe.device, dtype=dtype,
                                     batch_size=max(1, args.batch_size // 16), progress=not args.quiet,
                                     time_conditioned=pipe.config.model.time_conditioning)
        result["left_to_right"] = l2r
        se = l2r["window_standard_error"]
        print(f"  left-to-right NLL (exact, the model decoding left to right): {l2r['nats_per_token']:.4f} "
              f"nats/{unit} (s.e. over windows {'n/a' if se is None else f'{se:.4f}'}; {l2r['windows']} windows, "
              f"{l2r['sequences_scored']:,} sequences scored in {l2r['seconds']:.0f} s, against "
              f"{result['passes'] * result['windows']:,} for the NELBO)")
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


def cmd_study(args: argparse.Namespace) -> int:
    from dlm.experiments.study import (
        DEFAULT_GRID,
        parse_grid,
        plan_study,
        run_cell,
        slurm_script,
        write_study_report,
    )

    if (args.budget_time is None) == (args.budget_tokens is None):
        raise DlmError("give one budget per cell: --budget-time SECONDS (equal wall time) or --budget-tokens N "
                       "(equal training tokens)")
    budget = {"time": args.budget_time} if args.budget_time is not None else {"tokens": int(args.budget_tokens)}
    base = ([args.preset] if args.preset else []) + ([f"data.source={args.data}"] if args.data else []) + args.overrides
    grid = parse_grid(args.grid) if args.grid else DEFAULT_GRID
    eval_args = ["--target-se", str(args.target_se)]
    if args.gen:
        eval_args += ["--gen", str(args.gen), "--gen-length", str(args.gen_length), "--gen-steps", str(args.gen_steps)]
    plan = plan_study(Path(args.out), base, grid, budget, eval_args)
    command = "dlm " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["study"] else "dlm study ..."
    if args.slurm:
        path = slurm_script(plan, [a for a in sys.argv if a != "--slurm"] if sys.argv[1:2] == ["study"]
                            else ["dlm", "study", "--out", args.out])
        print(f"dlm study: {len(plan.cells)} cells; array job written to {path} (see its header for how to submit)")
        return 0
    if not args.report_only:
        indices = [args.cell] if args.cell is not None else range(len(plan.cells))
        for index in indices:
            if not 0 <= index < len(plan.cells):
                raise DlmError(f"--cell {index} is not a cell of this study (0–{len(plan.cells) - 1})")
            run_cell(plan, index)
    path = write_study_report(plan, command)
    crashed = sum(c["status"] == "crashed" for c in plan.cells)
    done = sum(c["status"] == "done" for c in plan.cells)
    print(f"dlm study: {done}/{len(plan.cells)} cells done, {crashed} crashed; table in {path}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from dlm.config import apply_overrides
    from dlm.experiments.sweep import parse_param, run_sweep, write_sweep_report
    from dlm.presets import get_preset

    if (args.budget_time is None) == (args.budget_tokens is None):
        raise DlmError("give one budget per trial: --budget-time SECONDS or --budget-tokens N")
    if not args.param:
        raise DlmError("nothing to search: give at least one --param KEY=log:LOW:HIGH (or float:, int:, choice:)")
    params = [parse_param(p) for p in args.param]
    base = apply_overrides(get_preset(args.preset or _default_preset()),
                           ([f"data.source={args.data}"] if args.data else []) + args.overrides)
    budget = {"time": args.budget_time} if args.budget_time is not None else {"tokens": int(args.budget_tokens)}
    study = run_sweep(Path(args.out), base, params, args.trials, budget, args.eval_windows, args.pruner, args.seed)
    path, best = write_sweep_report(Path(args.out), study, base, "dlm " + " ".join(sys.argv[1:]))
    print(f"dlm sweep: {len(study.trials)} trials; table in {path}" + (f"; best config {best}" if best else ""))
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
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest intact "
                   "checkpoint (a folder with none yet starts a new run)")
    p.add_argument("--fresh-optimizer", action="store_true", help="with --resume, when no checkpoint is wholly "
                   "intact: continue from the newest intact weights with a fresh optimizer and data order")
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
    p.add_argument("--l2r", action="store_true", help="also the exact left-to-right NLL of a diffusion model "
                   "(one forward pass per position: about context-length times the cost of one NELBO pass)")
    p.add_argument("--l2r-windows", type=int, default=0, metavar="N",
                   help="with --l2r: score only the first N windows of the split (default: all)")
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

    p = sub.add_parser("study", help="train a grid of configurations at an equal budget and tabulate them",
                       description="Train every combination of --grid values (default: the 6 schedules × uniform/"
                       "entropy masking × elbo/flat weighting) at an equal budget, each in its own process, evaluate "
                       "each with the same estimator, sampler and judge (an AR twin trained first), and write "
                       "OUT/study.md. Re-running the same command resumes a half-done study.")
    p.add_argument("--out", required=True, help="the study folder (cells, table, plots)")
    p.add_argument("--preset", help="the base config of every cell (default: shakespeare-char-cpu)")
    p.add_argument("--data", help="corpus of every cell (default: the preset's)")
    p.add_argument("--grid", action="append", metavar="KEY=V1,V2", help="a config field and its values; repeat "
                   "for more fields (the grid is their product)")
    p.add_argument("--budget-time", type=float, help="seconds of training per cell (equal wall time)")
    p.add_argument("--budget-tokens", type=float, help="training tokens per cell (equal data; independent of load)")
    p.add_argument("--target-se", type=float, default=0.01, help="Monte-Carlo standard error of each NELBO (nats)")
    p.add_argument("--gen", type=int, default=32, help="samples per cell for gen-PPL, entropy and self-BLEU (0: none)")
    p.add_argument("--gen-length", type=int, default=256)
    p.add_argument("--gen-steps", type=int, default=256)
    p.add_argument("--cell", type=int, help="run only this cell (0 = the AR reference), e.g. one array-job task")
    p.add_argument("--slurm", action="store_true", help="write OUT/study.sbatch, one array task per cell, and exit")
    p.add_argument("--report-only", action="store_true", help="rebuild OUT/study.md from what is done")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every cell")
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("sweep", help="Optuna search over config fields, one training run per trial",
                       description="Search config fields with Optuna (pip install 'dlm[sweep]'): each trial trains at "
                       "the budget, is pruned early on its validation loss, and is scored by the validation NELBO. "
                       "Re-running continues the search. Writes OUT/sweep.md and OUT/best.json.")
    p.add_argument("--out", required=True, help="the sweep folder (trials, journal, table, best config)")
    p.add_argument("--param", action="append", metavar="KEY=SPEC", help="a field to search: log:LOW:HIGH, "
                   "float:LOW:HIGH, int:LOW:HIGH or choice:A,B,…; repeat for more")
    p.add_argument("--trials", type=int, default=20, help="trials in all (counting those already run)")
    p.add_argument("--preset", help="base config (default: the default preset), or a config JSON file")
    p.add_argument("--data", help="corpus (default: the preset's)")
    p.add_argument("--budget-time", type=float, help="seconds of training per trial")
    p.add_argument("--budget-tokens", type=float, help="training tokens per trial")
    p.add_argument("--eval-windows", type=int, default=64, help="validation windows each trial is scored on")
    p.add_argument("--pruner", choices=("median", "none"), default="median",
                   help="stop trials whose validation loss is worse than the median at the same step")
    p.add_argument("--seed", type=int, default=0, help="the search's own seed (the sampler of parameters)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every trial")
    p.set_defaults(func=cmd_sweep)

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
    if extra and args.command in ("train", "study", "sweep") and all("=" in e and not e.startswith("-") for e in extra):
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
