"""`dlm study` and `dlm sweep`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dlm.cli.train import _default_preset
from dlm.errors import DlmError


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


def register(sub) -> None:
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
