"""`dlm study`: train a grid of configurations at an equal budget, evaluate each the same way, and
tabulate them.

    dlm study --out studies/objectives --budget-tokens 3e6
              --grid diffusion.schedule=linear,cosine --grid diffusion.weighting=elbo,flat

Every cell is a run folder `OUT/cells/NAME` trained by `dlm train` in its own process (a crash
stays in its cell) at the same budget — wall time (`--budget-time`) or tokens (`--budget-tokens`,
which does not depend on what else the machine is doing) — then scored by `dlm eval` with the same
estimator (the linear-schedule NELBO), the same sampler settings and the same judge: an AR twin
trained first, at the same budget, in `OUT/cells/ar`. It also supplies the token entropies of
masking=entropy cells. Cells that fail are reported, not dropped.

Re-running the same command resumes: evaluated cells are skipped, half-trained ones continue from
their checkpoints. `--cell K` runs one cell only and `--slurm` writes an array job that does so,
one task per cell, for a cluster; `--report-only` rebuilds the table. OUT/study.md holds the table,
OUT/report/ the standard `dlm report` (loss curves, likelihood and sample-quality tables).
"""

from __future__ import annotations

import itertools
import json
import math
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from dlm.config import RunConfig, apply_overrides
from dlm.errors import DlmError
from dlm.io import atomic_write_json, atomic_write_text

DEFAULT_GRID = {
    "diffusion.schedule": ["linear", "cosine", "loglinear", "sqrt", "clipped-cosine", "sigmoid"],
    "diffusion.masking": ["uniform", "entropy"],
    "diffusion.weighting": ["elbo", "flat"],
}


@dataclass
class StudyPlan:
    out: Path
    base: list[str]
    """The preset and key=value overrides every cell starts from (as `dlm train` arguments)."""
    grid: dict[str, list[str]]
    budget: dict
    """{"time": seconds} or {"tokens": n}."""
    eval_args: list[str]
    cells: list[dict] = field(default_factory=list)
    """name, overrides, status (pending, trained, done, crashed), error."""

    @property
    def state_path(self) -> Path:
        return self.out / "study.json"

    def save(self) -> None:
        atomic_write_json(self.state_path, {"base": self.base, "grid": self.grid, "budget": self.budget,
                                            "eval_args": self.eval_args, "cells": self.cells})


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise DlmError(f"--grid {item!r} is not of the form key=value1,value2 "
                           "(e.g. diffusion.schedule=linear,cosine)")
        grid[key.strip()] = [v.strip() for v in values.split(",") if v.strip()]
    return grid


def cell_name(overrides: dict[str, str]) -> str:
    return "__".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in overrides.items()) or "base"


def budget_overrides(budget: dict, cfg: RunConfig) -> list[str]:
    """Equal wall time: a time budget (the LR decays over it). Equal tokens: the steps that hold them."""
    if "time" in budget:
        return [f"train.max_time={budget['time']}", "train.max_steps=100000000"]
    steps = math.ceil(budget["tokens"] / (cfg.train.batch_size * cfg.model.block_size))
    return [f"train.max_steps={steps}", "train.max_time=0"]


def plan_study(out: Path, base: list[str], grid: dict[str, list[str]], budget: dict,
               eval_args: list[str]) -> StudyPlan:
    """The cells of a new study, or the saved plan of an existing one (which must match)."""
    plan = StudyPlan(out, base, grid, budget, eval_args)
    if plan.state_path.is_file():
        saved = json.loads(plan.state_path.read_text())
        if (saved["base"], saved["grid"], saved["budget"]) != (base, grid, budget):
            raise DlmError(f"{out} holds a study with other settings (base {saved['base']}, grid {saved['grid']}, "
                           f"budget {saved['budget']}); pass the same ones to resume it, or another --out")
        plan.cells = saved["cells"]
        return plan
    keys = list(grid)
    combos = [dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[k] for k in keys))]
    # The AR twin judges the samples and supplies entropy masking's entropies; without either, no twin.
    needs_twin = "--gen" in eval_args or "entropy" in grid.get("diffusion.masking", []) or any(
        "diffusion.masking=entropy" in b for b in base)
    plan.cells = [{"name": "ar", "overrides": {"train.objective": "ar"}, "status": "pending", "error": None}] \
        if needs_twin else []
    plan.cells += [{"name": cell_name(c), "overrides": c, "status": "pending", "error": None} for c in combos]
    out.mkdir(parents=True, exist_ok=True)
    plan.save()
    return plan


def base_config(base: list[str]) -> RunConfig:
    from dlm.presets import get_preset

    preset = base[0] if base and "=" not in base[0] else None
    return apply_overrides(get_preset(preset or "shakespeare-char-cpu"), [b for b in base if "=" in b])


def cell_train_command(plan: StudyPlan, cell: dict) -> list[str]:
    preset = [b for b in plan.base if "=" not in b]
    overrides = [b for b in plan.base if "=" in b] + [f"{k}={v}" for k, v in cell["overrides"].items()]
    if cell["overrides"].get("diffusion.masking") == "entropy":
        overrides.append(f"diffusion.entropy_run={plan.out / 'cells' / 'ar'}")
    cfg = apply_overrides(base_config(plan.base), overrides)
    return [sys.executable, "-m", "dlm", "train", "--out", str(plan.out / "cells" / cell["name"]), "--resume",
            "--quiet", *(["--preset", preset[0]] if preset else []), *overrides, *budget_overrides(plan.budget, cfg)]


def cell_eval_command(plan: StudyPlan, cell: dict) -> list[str]:
    folder = plan.out / "cells" / cell["name"]
    judge = ["--judge", str(plan.out / "cells" / "ar")] if "--gen" in plan.eval_args else []
    return [sys.executable, "-m", "dlm", "eval", "--ckpt", str(folder), "--json", str(folder / "eval.json"),
            "--quiet", *plan.eval_args, *judge]


def _run(command: list[str], log: Path) -> str | None:
    """Run a step of a cell, appending its output to the cell's log; None, or the error's last line."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"$ {shlex.join(command)}\n")
        f.flush()
        result = subprocess.run(command, stdout=f, stderr=subprocess.PIPE, text=True)
        f.write(result.stderr)
    if result.returncode == 0:
        return None
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else f"exit status {result.returncode}")[:300]


def run_cell(plan: StudyPlan, index: int, echo=print) -> None:
    cell = plan.cells[index]
    folder = plan.out / "cells" / cell["name"]
    if cell["status"] == "done":
        return
    twin = next((c for c in plan.cells if c["name"] == "ar"), None)
    if cell["name"] != "ar" and needs_ar(plan, cell) and (twin is None or twin["status"] != "done"):
        cell.update(status="crashed", error="the AR reference cell (judge and entropy source) did not finish")
        plan.save()
        return
    if cell["status"] != "trained":
        echo(f"dlm study: training cell {index} {cell['name']}")
        error = _run(cell_train_command(plan, cell), folder / "study.log")
        if error:
            cell.update(status="crashed", error=f"training: {error}")
            plan.save()
            echo(f"dlm study: cell {cell['name']} crashed: {error}")
            return
        cell.update(status="trained", error=None)
        plan.save()
    echo(f"dlm study: evaluating cell {index} {cell['name']}")
    error = _run(cell_eval_command(plan, cell), folder / "study.log")
    cell.update(status="crashed" if error else "done", error=f"evaluation: {error}" if error else None)
    plan.save()


def needs_ar(plan: StudyPlan, cell: dict) -> bool:
    return "--gen" in plan.eval_args or cell["overrides"].get("diffusion.masking") == "entropy"


def slurm_script(plan: StudyPlan, command: list[str]) -> Path:
    """An array job, one task per cell; with an AR twin, task 0 trains it and the others wait for it."""
    path = plan.out / "study.sbatch"
    again = shlex.join([c for c in command if c not in ("--slurm",)])
    text = f"""#!/bin/bash
#SBATCH --job-name=dlm-study --array=0-{len(plan.cells) - 1} --cpus-per-task=8 --gpus=1 --time=04:00:00
#SBATCH --output={plan.out}/slurm-%a.out --signal=USR1@120
# Generated by dlm study. Task 0 is the AR reference; submit the rest once it is done, e.g.
#   jid=$(sbatch --parsable --array=0 {path}) && sbatch --dependency=afterok:$jid --array=1-{len(plan.cells) - 1} {path}
# then rebuild the table with: {again} --report-only
{again} --cell "$SLURM_ARRAY_TASK_ID"
"""
    atomic_write_text(path, text)
    return path


def _fmt(value, spec: str = ".4f") -> str:
    return "—" if value is None else format(value, spec)


def study_table(plan: StudyPlan) -> str:
    keys = list(plan.grid)
    header = [k.rsplit(".", 1)[-1] for k in keys] + ["status", "steps", "tokens", "val NELBO (nats/token)",
                                                      "MC s.e.", "gen-PPL (AR judge)", "entropy", "self-BLEU"]
    rows = []
    for cell in plan.cells:
        folder = plan.out / "cells" / cell["name"]
        ev = json.loads((folder / "eval.json").read_text()) if (folder / "eval.json").is_file() else {}
        gen = ev.get("generation", {})
        steps, tokens = _progress(folder)
        values = [cell["overrides"].get(k, "(AR twin)" if cell["name"] == "ar" else "") for k in keys]
        status = cell["status"] if not cell["error"] else f"{cell['status']}: {cell['error']}"
        rows.append([*values, status, str(steps or "—"), f"{tokens / 1e6:.2f}M" if tokens else "—",
                     _fmt(ev.get("nats_per_token")), _fmt(ev.get("mc_standard_error")), _fmt(gen.get("gen_ppl"), ".2f"),
                     _fmt(gen.get("unigram_entropy"), ".3f"), _fmt(gen.get("self_bleu"), ".3f")])
    done = [r for r in rows if r[len(keys) + 3] != "—" and r[0] != "(AR twin)"]
    best = min(done, key=lambda r: float(r[len(keys) + 3]), default=None)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(f"**{v}**" if r is best and i == len(keys) + 3 else v for i, v in enumerate(r)) + " |"
              for r in rows]
    return "\n".join(lines)


def _progress(folder: Path) -> tuple[int | None, int | None]:
    log = folder / "log.jsonl"
    if not log.is_file():
        return None, None
    last = None
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "loss" in record and "tokens_seen" in record:
            last = record
    return (last["step"], last["tokens_seen"]) if last else (None, None)


def write_study_report(plan: StudyPlan, command: str) -> Path:
    from dlm.viz.report import write_report

    folders = [plan.out / "cells" / c["name"] for c in plan.cells]
    folders = [f for f in folders if (f / "config.json").is_file()]
    evals = [f / "eval.json" for f in folders if (f / "eval.json").is_file()]
    report = write_report(folders, evals, plan.out / "report") if folders else None
    budget = (f"{plan.budget['time']:g} s of training per cell" if "time" in plan.budget
              else f"{plan.budget['tokens']:,.0f} training tokens per cell")
    crashed = [c for c in plan.cells if c["status"] == "crashed"]
    lines = ["# dlm study", "", f"Command: `{command}`", "",
             f"Base: `{' '.join(plan.base) or 'the default preset'}`; budget: {budget}; evaluation: "
             f"`dlm eval {' '.join(plan.eval_args)}` (the NELBO under the linear schedule, whatever the training "
             "schedule, so every cell is scored by the same estimator; gen-PPL under the study's AR twin).", "",
             study_table(plan), "",
             f"{sum(c['status'] == 'done' for c in plan.cells)} of {len(plan.cells)} cells done, "
             f"{len(crashed)} crashed. The lowest NELBO is in bold. Only the elbo weighting with uniform "
             "masking trains on the bound itself; the other cells train another objective and are scored on the "
             "bound.", ""]
    if report is not None:
        lines += ["Loss curves, likelihood and sample-quality tables: [report/report.md](report/report.md).", ""]
    path = plan.out / "study.md"
    atomic_write_text(path, "\n".join(lines))
    return path
