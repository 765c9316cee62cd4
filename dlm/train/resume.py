"""Where a run continues from, and the run folder's writer lock, for `dlm train [--resume]`.

`--resume` continues from the newest intact checkpoint; a folder with nothing saved yet starts a
new run (so one cluster script serves the first submission and every requeue). When checkpoints
exist but none is intact, the run stops and names the choices instead of silently starting over;
`--fresh-optimizer` takes the newest intact weights with a fresh optimizer. A run that does start
from step 0 over an earlier log keeps that log beside the new one.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from dlm.errors import DlmError
from dlm.run_folder import (
    TRAINER_STATE,
    RunFolder,
    RunLock,
    checkpoint_step,
    load_trainer_state,
    weights_intact,
    weights_readable,
)
from dlm.train.distributed import DistInfo, all_reduce_sum


@dataclass
class ResumePoint:
    """Where a run continues from: nothing (step 0), a whole checkpoint, or only its weights."""
    checkpoint: Path | None = None
    saved: dict | None = None
    """The checkpoint's trainer state (None for a fresh start or a weights-only resume)."""
    weights_only: bool = False
    """--fresh-optimizer: the weights (and EMA) of a checkpoint whose trainer state is damaged."""
    step: int = 0


def take_lock(run: RunFolder, dist: DistInfo) -> RunLock | None:
    """The main rank takes the writer lock; every rank learns whether it got it."""
    lock, error = None, None
    if dist.is_main:
        try:
            lock = run.lock()
        except DlmError as e:
            error = e
    if dist.enabled:
        failed = all_reduce_sum(torch.tensor([float(error is not None)]), dist)
        if failed.item() and error is None:
            error = DlmError(f"another trainer holds the lock on {run.path}; see rank 0's message")
    if error is not None:
        raise error
    return lock


def find_resume_point(run: RunFolder, fresh_optimizer: bool, quiet: bool = False) -> ResumePoint:
    """The newest checkpoint that is intact and loads; with none, an error naming the choices, or
    (with `fresh_optimizer`) the newest checkpoint whose weights alone are intact."""
    problems: dict[Path, str] = {}
    for ckpt in reversed(run.checkpoints()):
        # Files that match their manifest can still be unloadable (a manifest rewritten to match
        # them): such a checkpoint is skipped like a damaged one, never half-loaded.
        problem = run.checkpoint_problem(ckpt) or next(
            filter(None, (weights_readable(ckpt, f.name) for f in sorted(ckpt.glob("*.safetensors")))), None)
        if problem is None:
            try:
                return ResumePoint(ckpt, load_trainer_state(ckpt), step=checkpoint_step(ckpt))
            except DlmError:
                problem = f"{TRAINER_STATE} cannot be loaded (not a plain-tensor state)"
        problems[ckpt] = problem
        if not quiet:
            print(f"dlm: skipping checkpoint {ckpt}: {problem}", file=sys.stderr)
    if not problems:
        return ResumePoint()  # nothing saved yet: a new run
    names = ", ".join(f"{c.name} ({problem})" for c, problem in sorted(problems.items()))
    if not fresh_optimizer:
        raise DlmError(f"no checkpoint in {run.path} is intact: {names}. Either continue from the newest intact "
                       "weights with a fresh optimizer and data order (add --fresh-optimizer), or move the folder "
                       "aside and train from scratch")
    for ckpt in reversed(run.checkpoints()):
        if weights_intact(ckpt) and weights_readable(ckpt) is None:
            return ResumePoint(ckpt, None, weights_only=True, step=checkpoint_step(ckpt))
    raise DlmError(f"--fresh-optimizer: no checkpoint in {run.path} has intact weights either ({names}); "
                   "move the folder aside and train from scratch")


def keep_old_log(run: RunFolder) -> None:
    """A run starting at step 0 over an earlier history moves that log aside instead of mixing them."""
    if run.log_path.is_file() and run.log_path.stat().st_size > 0:
        kept = run.path / f"log-before-restart-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
        os.replace(run.log_path, kept)
        print(f"dlm: {run.path} has a log but no checkpoint to continue from; starting from step 0, "
              f"the earlier log is kept as {kept.name}", file=sys.stderr)


def resume_message(run: RunFolder, point: ResumePoint, max_steps: int, max_time: float) -> str:
    """The first line of a resumed run: where it continues from, and what is left of its budget."""
    if point.checkpoint is None:
        return f"dlm: no checkpoint in {run.path} yet; starting a new run from step 0"
    if point.weights_only:
        return (f"dlm: resuming {run.path} from the weights of checkpoint {point.checkpoint.name} (step "
                f"{point.step:,} of {max_steps:,}) with a fresh optimizer and data order (--fresh-optimizer: its "
                "trainer state is damaged); the time budget restarts")
    saved = point.saved
    budget = ""
    if max_time > 0:
        left = max(max_time - saved["elapsed"], 0.0)
        budget = f"; {left:,.0f} s of the {max_time:,.0f} s time budget left"
    return (f"dlm: resuming {run.path} from checkpoint {point.checkpoint.name} (step {saved['step']:,} of "
            f"{max_steps:,}, {saved['tokens_seen'] / 1e6:,.2f}M tokens seen, {saved['elapsed']:,.0f} s trained)"
            f"{budget}")
