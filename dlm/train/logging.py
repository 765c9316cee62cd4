"""Where training records go: JSONL always; TensorBoard when installed; Weights & Biases on request.

Only the main rank logs. Records are flat dicts with a "step" key (see the trainer for fields).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dlm.errors import DlmError


class RunLogger:
    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True, wandb: bool = False,
                 wandb_project: str = "dlm", config: dict | None = None):
        self.enabled = enabled
        self._jsonl = open(run_dir / "log.jsonl", "a", encoding="utf-8") if enabled else None
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:  # tensorboard is optional: JSONL is the record
                pass
        if wandb:
            try:
                import wandb as wandb_module
            except ImportError:
                print("dlm: --wandb ignored: wandb is not installed (pip install wandb); logging to "
                      f"{run_dir / 'log.jsonl'} only", file=sys.stderr)
            else:
                self._wandb = wandb_module.init(project=wandb_project, name=run_dir.name, config=config,
                                                dir=str(run_dir), resume="allow")

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        try:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
        except OSError as e:  # a full disk, most likely: the checkpoints written so far are intact
            raise DlmError(f"cannot write the training log {self._jsonl.name} ({e.strerror or e}); free some "
                           "space, then continue with --resume") from None
        step = record.get("step", 0)
        numbers = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
        if self._tb is not None:
            for key, value in numbers.items():
                self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(numbers, step=step)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
