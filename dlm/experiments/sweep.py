"""`dlm sweep`: an Optuna search over any config fields, one training run per trial at a fixed budget.

    dlm sweep --out sweeps/lr --trials 20 --budget-time 120
              --param train.lr=log:3e-4:1e-2 --param train.batch_size=choice:8,16,32

A parameter is `KEY=log:LOW:HIGH` (log-uniform float), `float:LOW:HIGH`, `int:LOW:HIGH` or
`choice:A,B,...`. Each trial trains `OUT/trials/trial-NNNN` in this process and is scored by the
validation NELBO (the linear-schedule bound on the first --eval-windows windows of the split, as
`dlm eval` computes it), so trials with different training objectives compare on one scale.
Trials are pruned early (Optuna's median rule) on the logged validation loss; sweeping a field
that changes the training objective (diffusion.weighting, diffusion.masking) makes that loss
incomparable across trials, so pass --pruner none then. The study lives in OUT/optuna.journal:
re-running the command continues it. OUT/sweep.md tabulates the trials and OUT/best.json is the
best trial's full config, usable as `dlm train --preset OUT/best.json`. Needs `pip install 'dlm[sweep]'`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from dlm.config import RunConfig, apply_overrides
from dlm.data.loader import eval_windows
from dlm.data.shards import prepare_corpus
from dlm.errors import DlmError
from dlm.eval.likelihood import evaluate_likelihood
from dlm.experiments.study import budget_overrides
from dlm.inference import load
from dlm.io import atomic_write_json, atomic_write_text
from dlm.train.trainer import train


@dataclass
class Param:
    key: str
    kind: str
    """log, float, int or choice."""
    low: float = 0.0
    high: float = 0.0
    choices: tuple[str, ...] = ()

    def suggest(self, trial) -> str:
        if self.kind == "choice":
            return str(trial.suggest_categorical(self.key, list(self.choices)))
        if self.kind == "int":
            return str(trial.suggest_int(self.key, int(self.low), int(self.high)))
        return repr(trial.suggest_float(self.key, self.low, self.high, log=self.kind == "log"))


def parse_param(item: str) -> Param:
    key, sep, spec = item.partition("=")
    kind, _, rest = spec.partition(":")
    bad = DlmError(f"--param {item!r}: write KEY=log:LOW:HIGH, KEY=float:LOW:HIGH, KEY=int:LOW:HIGH or "
                   "KEY=choice:A,B,… (e.g. train.lr=log:1e-4:1e-2)")
    if not sep or kind not in ("log", "float", "int", "choice") or not rest:
        raise bad
    if kind == "choice":
        return Param(key.strip(), kind, choices=tuple(v.strip() for v in rest.split(",") if v.strip()))
    try:
        low, high = (float(v) for v in rest.split(":"))
    except ValueError:
        raise bad from None
    if not low < high or (kind == "log" and low <= 0):
        raise DlmError(f"--param {item!r}: need LOW < HIGH (and LOW > 0 for log)")
    return Param(key.strip(), kind, low, high)


def import_optuna():
    try:
        import optuna
    except ImportError:
        raise DlmError("dlm sweep needs Optuna, which is not installed; pip install 'dlm[sweep]'") from None
    return optuna


def score(run: Path, windows: int, seed: int = 0) -> dict:
    """The validation NELBO of a trained run (its newest checkpoint), as `dlm eval` computes it."""
    pipe = load(run, dtype="fp32")
    corpus = prepare_corpus(pipe.config.data, tokenizer=pipe.tokenizer)
    val = eval_windows(corpus.split("val"), pipe.config.model.block_size)[:windows]
    return evaluate_likelihood(pipe.model, val, pipe.tokenizer.special, causal=pipe.is_autoregressive,
                               block=pipe.diffusion_block,
                               device=pipe.device, dtype=torch.float32, seed=seed, target_se=0.01, progress=False)


def run_sweep(out: Path, base: RunConfig, params: list[Param], trials: int, budget: dict, eval_windows_n: int,
              pruner: str = "median", seed: int = 0, echo=print):
    """Run (or continue) the sweep; returns the Optuna study."""
    optuna = import_optuna()
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    out.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(out / "optuna.journal")))
    pruners = optuna.pruners
    chosen_pruner = pruners.MedianPruner(n_startup_trials=3) if pruner == "median" else pruners.NopPruner()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="dlm-sweep", storage=storage, direction="minimize", load_if_exists=True,
                                sampler=optuna.samplers.TPESampler(seed=seed), pruner=chosen_pruner)

    def objective(trial) -> float:
        overrides = [f"{p.key}={p.suggest(trial)}" for p in params]
        cfg = apply_overrides(base, overrides)
        cfg = apply_overrides(cfg, budget_overrides(budget, cfg))
        run = out / "trials" / f"trial-{trial.number:04d}"
        trial.set_user_attr("overrides", overrides)
        echo(f"dlm sweep: trial {trial.number}: {' '.join(overrides)}")

        def report(step: int, val_loss: float) -> bool:
            trial.report(val_loss, step)
            return trial.should_prune()

        started = time.time()
        result = train(cfg, run, resume=(run / "config.json").is_file(), quiet=True, on_validate=report)
        trial.set_user_attr("steps", result.step)
        trial.set_user_attr("seconds", round(time.time() - started, 1))
        if result.stopped_by == "pruned":
            raise optuna.TrialPruned()
        figures = score(run, eval_windows_n)
        trial.set_user_attr("mc_standard_error", figures["mc_standard_error"])
        return figures["nats_per_token"]

    remaining = trials - len([t for t in study.trials if t.state.is_finished()])
    if remaining > 0:
        study.optimize(objective, n_trials=remaining, catch=(DlmError,))
    return study


def write_sweep_report(out: Path, study, base: RunConfig, command: str) -> tuple[Path, Path | None]:
    rows = ["| trial | state | val NELBO (nats/token) | MC s.e. | steps | seconds | parameters |",
            "|---|---|---|---|---|---|---|"]
    finished = [t for t in study.trials if t.state.is_finished()]
    for t in sorted(finished, key=lambda t: (t.value is None, t.value if t.value is not None else math.inf)):
        se = t.user_attrs.get("mc_standard_error")
        rows.append(f"| {t.number} | {t.state.name.lower()} | {'—' if t.value is None else f'{t.value:.4f}'} | "
                    f"{'—' if se is None else f'{se:.4f}'} | {t.user_attrs.get('steps', '—')} | "
                    f"{t.user_attrs.get('seconds', '—')} | `{' '.join(t.user_attrs.get('overrides', []))}` |")
    best_path = None
    complete = [t for t in finished if t.value is not None]
    if complete:
        best = min(complete, key=lambda t: t.value)
        cfg = apply_overrides(base, best.user_attrs["overrides"])
        cfg.preset = f"sweep:{out.name}:trial-{best.number}"
        best_path = out / "best.json"
        atomic_write_json(best_path, cfg.to_dict())
    text = "\n".join(["# dlm sweep", "", f"Command: `{command}`", "",
                      f"{len(finished)} trials finished, best first. Each trial is scored by the validation NELBO "
                      "(linear-schedule bound, `dlm eval`'s estimator) of its final checkpoint.", "", *rows, "",
                      f"Best config: `{best_path}` (train it with `dlm train --preset {best_path}`)." if best_path
                      else "No trial has completed yet.", ""])
    path = out / "sweep.md"
    atomic_write_text(path, text)
    return path, best_path
