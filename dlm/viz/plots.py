"""Figures for `dlm report`: loss curves of runs, and sample quality against sampling steps.

matplotlib is optional (`pip install 'dlm[plot]'`) and imported only here, with the Agg backend
(no display needed). Functions take plain numbers, not run objects, and write PNGs atomically.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

from dlm.io import atomic_write_bytes

PLOT_INSTALL_HINT = "pip install 'dlm[plot]'"


def pyplot():
    """matplotlib.pyplot on the Agg backend; ImportError when matplotlib is not installed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def have_matplotlib() -> bool:
    try:
        pyplot()
    except ImportError:
        return False
    return True


@dataclass
class LossCurve:
    """One run's training loss and validation loss (nats/token) against optimizer steps."""

    label: str
    train_steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    tokens_per_step: float | None = None
    """Training tokens per optimizer step, when the log says (the x axis is then tokens)."""


@dataclass
class QualitySeries:
    """One run/sampler's sample quality at several sampling-step counts (sorted by steps)."""

    label: str
    steps: list[int] = field(default_factory=list)
    gen_ppl: list[float | None] = field(default_factory=list)
    entropy: list[float] = field(default_factory=list)


def _save(fig, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    pyplot().close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def plot_losses(curves: list[LossCurve], path: Path) -> Path:
    """Training loss (solid) and validation loss (dashed, dots) vs step, one colour per run."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    # Runs with different batch sizes compare on training tokens, not steps: use tokens when every run says.
    by_tokens = all(c.tokens_per_step for c in curves)
    for k, curve in enumerate(curves):
        colour = f"C{k % 10}"
        scale = curve.tokens_per_step / 1e6 if by_tokens else 1.0
        if curve.train_steps:
            ax.plot([s * scale for s in curve.train_steps], curve.train_loss, color=colour, lw=1.2,
                    label=f"{curve.label} train")
        if curve.val_steps:
            ax.plot([s * scale for s in curve.val_steps], curve.val_loss, color=colour, ls="--", marker="o", ms=3,
                    label=f"{curve.label} val")
    ax.set_xlabel("training tokens (millions)" if by_tokens else "optimizer step")
    ax.set_ylabel("loss (nats/token; NELBO bound for diffusion runs)")
    ax.set_title("Training and validation loss" + (" vs tokens" if by_tokens else " vs step"))
    ax.grid(alpha=0.3)
    if any(c.train_steps or c.val_steps for c in curves):
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_quality_vs_steps(series: list[QualitySeries], path: Path) -> Path:
    """Gen-PPL (log scale, when judged) and unigram entropy (nats) against sampling steps, one line each."""
    plt = pyplot()
    fig, (ax_ppl, ax_ent) = plt.subplots(1, 2, figsize=(11, 4.2))
    for k, s in enumerate(series):
        colour = f"C{k % 10}"
        judged = [(st, p) for st, p in zip(s.steps, s.gen_ppl, strict=True) if p is not None]
        if judged:
            ax_ppl.plot(*zip(*judged, strict=True), color=colour, marker="o", ms=4, label=s.label)
        ax_ent.plot(s.steps, s.entropy, color=colour, marker="o", ms=4, label=s.label)
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda value, _: f"{value:g}")
    all_steps = sorted({st for s in series for st in s.steps})
    for ax in (ax_ppl, ax_ent):
        ax.set_xscale("log", base=2)
        ax.set_xticks(all_steps)  # the step counts measured, as plain numbers
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("sampling steps")
        ax.grid(alpha=0.3, which="both")
    if any(p is not None for s in series for p in s.gen_ppl):
        ax_ppl.set_yscale("log")
        ax_ppl.yaxis.set_major_formatter(plain)
        ppls = [p for s in series for p in s.gen_ppl if p is not None]
        # Label the in-between ticks only when the range is under a decade (else they crowd).
        ax_ppl.yaxis.set_minor_formatter(plain if max(ppls) < 10 * min(ppls) else NullFormatter())
        ax_ppl.legend(fontsize=8)
    else:
        ax_ppl.text(0.5, 0.5, "no judge: gen-PPL not measured", ha="center", va="center", transform=ax_ppl.transAxes)
    ax_ppl.set_ylabel("gen-PPL under the judge (lower: judged likelier)")
    ax_ppl.set_title("Generative perplexity vs steps")
    ax_ent.set_ylabel("unigram entropy per sample (nats)")
    ax_ent.set_title("Diversity vs steps (low entropy = repetition)")
    ax_ent.legend(fontsize=8)
    return _save(fig, path)
