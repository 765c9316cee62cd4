"""`dlm report`: a Markdown report (and plots) of runs and their evaluations, from files alone.

Reads, and never imports the trainer or loads a model:
  RUN/config.json                 the resolved config: objective, geometry, tokenizer
  RUN/log.jsonl                   one record per log line: step, loss, lr, grad_norm, tokens_per_s,
                                  tokens_seen, elapsed_s, max_memory_mb; val_loss on validation lines
  RUN/checkpoints/step-*/model.safetensors   only its header, for the parameter count
  FILE.json                       `dlm eval --json` results (one object, or a list of them), each
                                  optionally with a `generation` dict

A resumed run appends to log.jsonl; when a step number goes back, the records after it from the
abandoned stretch are dropped, so each step appears once. A torn last line (a run killed
mid-write) is skipped and counted.

Writes OUT/report.md and, when matplotlib is installed, OUT/loss.png and (when generation results
at two or more step counts exist) OUT/quality_vs_steps.png, each atomically.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

from dlm.errors import DlmError
from dlm.io import atomic_write_text


@dataclass
class RunRecord:
    name: str
    path: Path
    config: dict
    train: list[dict] = field(default_factory=list)
    """Log records with a training `loss`, one per step, in step order."""
    val: list[dict] = field(default_factory=list)
    """Log records with a `val_loss`, one per step, in step order."""
    bad_lines: int = 0
    params: int | None = None


@dataclass
class EvalEntry:
    source: Path
    run: str
    step: int | None
    result: dict


@dataclass
class ReportOutcome:
    report: Path
    plots: list[Path]
    plots_skipped: str | None
    """Why no plots were drawn (matplotlib missing), or None."""


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DlmError(f"{what} {path} not found; check the path") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DlmError(f"{what} {path} is not readable JSON ({str(e).splitlines()[0]}); "
                       "pass a file written by dlm") from None


def read_log(path: Path) -> tuple[list[dict], int]:
    """The records of a log.jsonl, one per (step, kind) with resumed stretches resolved, and the
    number of unreadable lines skipped."""
    if not path.is_file():
        return [], 0
    records: list[dict] = []
    bad = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            bad += 1
            continue
        records.append(record)
    return records, bad


def newest_stretch(records: list[dict]) -> list[dict]:
    """Keep the newest stretch: a record at step s drops earlier records at steps ≥ s."""
    kept: list[dict] = []
    for record in records:
        while kept and kept[-1]["step"] >= record["step"]:
            kept.pop()
        kept.append(record)
    return kept


def checkpoint_params(run_dir: Path, tied: bool) -> int | None:
    """Parameter count from the safetensors header of the newest checkpoint's weights (None if none).

    Tied runs store the shared embedding twice (as embed.weight and head.weight); it counts once.
    """
    for ckpt in sorted((run_dir / "checkpoints").glob("step-*"), reverse=True):
        weights = ckpt / "model.safetensors"
        try:
            with open(weights, "rb") as f:
                (size,) = struct.unpack("<Q", f.read(8))
                if size > 100 * 2**20:
                    continue
                header = json.loads(f.read(size))
        except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError):
            continue
        counts = {k: math.prod(v["shape"]) for k, v in header.items()
                  if k != "__metadata__" and isinstance(v, dict) and "shape" in v}
        if tied and "head.weight" in counts and "embed.weight" in counts:
            counts.pop("head.weight")
        return sum(counts.values())
    return None


def read_run(path: Path, name: str) -> RunRecord:
    """A run folder's config, log and parameter count."""
    if not path.is_dir():
        raise DlmError(f"run folder {path} not found; pass the --out folder of a training run")
    if not (path / "config.json").is_file():
        raise DlmError(f"{path} is not a dlm run folder (no config.json); pass the --out folder of a training run")
    config = _read_json(path / "config.json", "run config")
    if not isinstance(config, dict):
        raise DlmError(f"run config {path / 'config.json'} is not a JSON object; restore it from the run")
    records, bad = read_log(path / "log.jsonl")
    train = newest_stretch([r for r in records if isinstance(r.get("loss"), (int, float))])
    val = newest_stretch([r for r in records if isinstance(r.get("val_loss"), (int, float))])
    tied = bool(config.get("model", {}).get("tie_weights"))
    return RunRecord(name, path, config, train, val, bad, checkpoint_params(path, tied))


def _run_of_checkpoint(checkpoint: str | None, runs: list[RunRecord]) -> tuple[str, int | None]:
    """(run name, checkpoint step) for an eval result's `checkpoint` path."""
    if not checkpoint:
        return "?", None
    ckpt = Path(checkpoint)
    step = int(ckpt.name.removeprefix("step-")) if ckpt.name.removeprefix("step-").isdigit() else None
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt
    for run in runs:
        if run.path.resolve() == run_dir.resolve():
            return run.name, step
    return run_dir.name, step


def read_evals(paths: list[Path], runs: list[RunRecord]) -> list[EvalEntry]:
    """Every result in the eval files, tagged with its run (from its checkpoint path) and file."""
    entries = []
    for path in paths:
        data = _read_json(path, "eval file")
        results = data if isinstance(data, list) else [data]
        if not results or not all(isinstance(r, dict) for r in results):
            raise DlmError(f"eval file {path} holds neither a result object nor a list of them; "
                           "pass a file written by dlm eval --json")
        for result in results:
            run, step = _run_of_checkpoint(result.get("checkpoint"), runs)
            entries.append(EvalEntry(path, run, step, result))
    return entries


# ── Markdown ────────────────────────────────────────────────────────────────────────────────────────

def _cell(value, fmt: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    text = format(value, fmt) if fmt else str(value)
    return text.replace("|", "\\|")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _params(n: int | None) -> str:
    return "—" if n is None else f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n:,}"


def _unit(tokenizer: str | None) -> str:
    return "char" if tokenizer == "char" else "token"


def runs_table(runs: list[RunRecord]) -> str:
    rows = []
    for run in runs:
        model, train_cfg = run.config.get("model", {}), run.config.get("train", {})
        geometry = (f"{model.get('n_layer')}×{model.get('n_head')}×{model.get('d_model')}, "
                    f"context {model.get('block_size')}, vocab {model.get('vocab_size')}"
                    f"{', tied' if model.get('tie_weights') else ''}") if model else "—"
        last = run.train[-1] if run.train else {}
        unit = _unit(run.config.get("data", {}).get("tokenizer"))
        rows.append([_cell(run.name), _cell(train_cfg.get("objective")), _cell(run.config.get("preset")),
                     _params(run.params), geometry, _cell(last.get("step"), ","), _cell(last.get("tokens_seen"), ","),
                     _cell(last.get("elapsed_s"), ".0f"), _cell(last.get("loss"), ".4f"),
                     _cell(run.val[-1]["val_loss"] if run.val else None, ".4f"), f"nats/{unit}"])
    header = ["run", "objective", "preset", "parameters", "layers×heads×width", "steps", "tokens seen",
              "train time (s)", "last train loss", "last val loss", "loss unit"]
    return _table(header, rows)


KIND = {"nelbo_bound": "NELBO (bound)", "exact_nll": "exact NLL"}


def likelihood_table(entries: list[EvalEntry]) -> str:
    rows = []
    for e in entries:
        r = e.result
        if "nats_per_token" not in r:
            continue
        unit = _unit(r.get("tokenizer"))
        ppl = f"{r['perplexity']:.3f}" if r.get("perplexity") is not None else (
            f"≤ {r['perplexity_bound']:.3f}" if r.get("perplexity_bound") is not None else "—")
        windows = f"{r.get('windows', '—')} × {r.get('window_length', '—')}"
        kind = KIND.get(r.get("kind"), _cell(r.get("kind")))
        rows.append([_cell(e.run), _cell(e.step, ","), _cell(r.get("split")), kind,
                     f"{r['nats_per_token']:.4f} nats/{unit}", f"{_cell(r.get('bits_per_token'), '.4f')} bits/{unit}",
                     ppl, _cell(r.get("mc_standard_error"), ".4f"), _cell(r.get("window_standard_error"), ".4f"),
                     windows, _cell(r.get("passes")), _cell(r.get("weights")), _cell(e.source.name)])
    header = ["run", "ckpt step", "split", "kind", "loss", "bits", "perplexity", "Monte-Carlo s.e. (nats)",
              "window s.e. (nats)", "windows × tokens", "passes", "weights", "file"]
    return _table(header, rows) if rows else "_No likelihood results._"


def _generations(entries: list[EvalEntry]) -> list[tuple[EvalEntry, dict]]:
    pairs = [(e, e.result["generation"]) for e in entries if isinstance(e.result.get("generation"), dict)]
    return sorted(pairs, key=lambda p: (p[0].run, str(p[1].get("sampler")), p[1].get("steps") or 0))


def quality_table(entries: list[EvalEntry]) -> str:
    rows = []
    for e, g in _generations(entries):
        gen_ppl = "—" if g.get("gen_ppl") is None else f"{g['gen_ppl']:.3f} {g.get('gen_ppl_unit', 'per dlm token')}"
        distinct = "/".join(_cell(g.get(f"distinct_{n}"), ".3f") for n in (1, 2, 3, 4))
        rows.append([_cell(e.run), _cell(g.get("sampler")), _cell(g.get("steps")), _cell(g.get("temperature")),
                     f"{_cell(g.get('samples'))} × {_cell(g.get('length'))}", gen_ppl, _cell(g.get("judge")),
                     _cell(g.get("unigram_entropy"), ".3f"), distinct, _cell(g.get("self_bleu"), ".3f"),
                     _cell(g.get("mauve"), ".3f"), _cell(g.get("tokens_per_s"), ",.0f"),
                     _cell(g.get("forward_passes"), ","), _cell(e.source.name)])
    header = ["run", "sampler", "steps", "temperature", "samples × tokens", "gen-PPL", "judge",
              "unigram entropy (nats)", "distinct-1/2/3/4", "self-BLEU", "MAUVE", "tokens/s", "forward passes", "file"]
    return _table(header, rows) if rows else "_No sample-quality results (run `dlm eval --gen N`)._"


# ── Plot data ───────────────────────────────────────────────────────────────────────────────────────

def quality_series(entries: list[EvalEntry]):
    """One QualitySeries per (run, sampler, judge) with results at two or more step counts;
    results at the same step count are averaged."""
    from dlm.viz.plots import QualitySeries

    groups: dict[tuple, dict[int, list[dict]]] = {}
    for e, g in _generations(entries):
        if isinstance(g.get("steps"), int) and isinstance(g.get("unigram_entropy"), (int, float)):
            groups.setdefault((e.run, g.get("sampler"), g.get("judge")), {}).setdefault(g["steps"], []).append(g)
    groups = {key: by_steps for key, by_steps in groups.items() if len(by_steps) >= 2}
    judges = {key[2] for key in groups if key[2]}
    series = []
    for (run, sampler, judge), by_steps in groups.items():
        label = f"{run} · {sampler}" + (f" · judge {Path(judge).name}" if judge and len(judges) > 1 else "")
        s = QualitySeries(label)
        for steps in sorted(by_steps):
            gs = by_steps[steps]
            ppls = [g["gen_ppl"] for g in gs if isinstance(g.get("gen_ppl"), (int, float))]
            s.steps.append(steps)
            s.gen_ppl.append(math.exp(sum(math.log(p) for p in ppls) / len(ppls)) if ppls else None)
            s.entropy.append(sum(g["unigram_entropy"] for g in gs) / len(gs))
        series.append(s)
    return series


def _loss_curves(runs: list[RunRecord]):
    from dlm.viz.plots import LossCurve

    def tokens_per_step(run: RunRecord) -> float | None:
        last = next((r for r in reversed(run.train) if r.get("tokens_seen") and r["step"]), None)
        return last["tokens_seen"] / last["step"] if last else None

    return [LossCurve(run.name, [r["step"] for r in run.train], [r["loss"] for r in run.train],
                      [r["step"] for r in run.val], [r["val_loss"] for r in run.val], tokens_per_step(run))
            for run in runs]


# ── The report ──────────────────────────────────────────────────────────────────────────────────────

def _run_names(paths: list[Path]) -> list[str]:
    """Folder names, or the paths as given where two runs share a folder name."""
    names = [p.name or str(p) for p in paths]
    return [str(p) if names.count(n) > 1 else n for p, n in zip(paths, names, strict=True)]


def write_report(run_paths: list[str | Path], eval_paths: list[str | Path], out_dir: str | Path) -> ReportOutcome:
    """Read the runs and eval files, write OUT/report.md and the plots; see the module docstring."""
    if not run_paths and not eval_paths:
        raise DlmError("nothing to report; pass run folders (dlm report RUN ...) and/or --eval FILE.json")
    paths = [Path(p) for p in run_paths]
    runs = [read_run(p, name) for p, name in zip(paths, _run_names(paths), strict=True)]
    entries = read_evals([Path(p) for p in eval_paths], runs)
    out_dir = Path(out_dir)

    plots: list[Path] = []
    skipped = None
    from dlm.viz.plots import PLOT_INSTALL_HINT, have_matplotlib, plot_losses, plot_quality_vs_steps

    series = quality_series(entries)
    if not have_matplotlib():
        skipped = f"matplotlib is not installed; {PLOT_INSTALL_HINT} and run dlm report again for the plots"
    else:
        if any(run.train or run.val for run in runs):
            plots.append(plot_losses(_loss_curves(runs), out_dir / "loss.png"))
        if series:
            plots.append(plot_quality_vs_steps(series, out_dir / "quality_vs_steps.png"))

    lines = ["# dlm report", "",
             f"{len(runs)} run(s): {', '.join(f'`{r.path}`' for r in runs) or '—'}; "
             f"{len(eval_paths)} eval file(s): {', '.join(f'`{p}`' for p in eval_paths) or '—'}.", ""]
    if runs:
        lines += ["## Runs", "", runs_table(runs), "",
                  "Losses in nats per token (per character for character-level runs). *Train loss*: the training "
                  "objective on the last logged batches (diffusion: the NELBO bound; AR: the exact NLL). *Val loss*: "
                  "the trainer's quick fixed-seed estimate; use `dlm eval` (below) for figures. *Parameters*: from "
                  "the newest checkpoint's weights.", ""]
        bad = [f"`{r.name}` ({r.bad_lines})" for r in runs if r.bad_lines]
        if bad:
            lines += [f"Unreadable log lines skipped: {', '.join(bad)}.", ""]
    lines += ["## Likelihood", "", likelihood_table(entries), "",
              "*NELBO (bound)*: the diffusion model's upper bound on the NLL, estimated by Monte Carlo; *exact NLL*: "
              "the AR twin's. *Monte-Carlo s.e.*: the estimator's error; *window s.e.*: the spread over windows "
              "(how much the figure would move on other text of the same kind).", "",
              "## Sample quality", "", quality_table(entries), "",
              "*gen-PPL* is per dlm token under a dlm AR judge and per judge token under a Hugging Face judge: "
              "compare it only between rows with the same judge, and always beside the entropy (low gen-PPL with "
              "low entropy is repetition). *distinct-n*: distinct n-grams over all n-grams; *self-BLEU*: BLEU-4 of "
              "each sample against the others (lower is more diverse).", "", "## Plots", ""]
    if skipped:
        lines += [f"Plots skipped: {skipped}.", ""]
    else:
        titles = {"loss.png": "Training and validation loss vs training tokens",
                  "quality_vs_steps.png": "Sample quality vs sampling steps"}
        lines += [line for p in plots for line in (f"![{titles[p.name]}]({p.name})", "")]
        if not series:
            lines += ["No quality-vs-steps plot: no run/sampler has generation results at two or more step counts "
                      "(run `dlm eval --gen N --gen-steps S` for several S).", ""]
    report = out_dir / "report.md"
    atomic_write_text(report, "\n".join(lines))
    return ReportOutcome(report, plots, skipped)
