"""The `dlm` command. Each subcommand lives in a module of this package that registers its flags
and calls one function: train/finetune (train.py), sample/chat (generate.py), eval/report
(evaluate.py), study/sweep (experiments.py); presets is here. Nothing heavy is imported until a
command runs, so `dlm --help` is instant."""

from __future__ import annotations

import argparse
import json
import sys

from dlm import __version__
from dlm.cli import adapt, evaluate, experiments, export, generate, serve, train
from dlm.errors import DlmError


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
                                     "autoregressive twins: train, sample, evaluate, chat.")
    parser.add_argument("--version", action="version", version=f"dlm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train.register(sub)
    adapt.register(sub)
    generate.register(sub)
    evaluate.register(sub)
    experiments.register(sub)
    serve.register(sub)
    export.register(sub)
    p = sub.add_parser("presets", help="list the named configs")
    p.add_argument("--show", metavar="NAME", help="print every field of one preset: its value and what it means")
    p.add_argument("--json", action="store_true", help="with --show: the config as JSON instead")
    p.set_defaults(func=cmd_presets)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line as `main` reads it (bad input exits 2 with argparse's message); tests/test_docs.py
    checks the documented commands with it."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come between flags (argparse takes only one run of positionals).
    takes_overrides = args.command in ("train", "finetune", "adapt", "study", "sweep")
    if extra and takes_overrides and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    import warnings

    warnings.formatwarning = lambda message, *args, **kwargs: f"dlm: warning: {message}\n"
    args = parse_args(argv)
    try:
        return args.func(args)
    except DlmError as e:
        print(f"dlm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dlm: interrupted", file=sys.stderr)
        return 130
