"""Run logging: JSONL always, TensorBoard when importable, wandb a no-op with a message when absent."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from dlm.train.logging import RunLogger


def test_jsonl_and_tensorboard_get_every_numeric_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    scalars = []

    class FakeWriter:
        def __init__(self, log_dir):
            self.log_dir = log_dir

        def add_scalar(self, key, value, step):
            scalars.append((key, value, step))

        def close(self):
            scalars.append("closed")

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    logger = RunLogger(tmp_path, tensorboard=True)
    logger.log({"step": 3, "loss": 2.5, "lr": 1e-3, "note": "text is not a scalar"})
    logger.close()
    assert json.loads((tmp_path / "log.jsonl").read_text()) == {"step": 3, "loss": 2.5, "lr": 1e-3,
                                                                 "note": "text is not a scalar"}
    assert scalars == [("loss", 2.5, 3), ("lr", 1e-3, 3), "closed"]


def test_missing_tensorboard_is_silent_and_missing_wandb_says_so(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    monkeypatch.setitem(sys.modules, "wandb", None)
    logger = RunLogger(tmp_path, tensorboard=True, wandb=True)
    logger.log({"step": 1, "loss": 3.0})
    logger.close()
    err = capsys.readouterr().err
    assert "wandb ignored: wandb is not installed (pip install wandb)" in err and err.count("\n") == 1
    assert (tmp_path / "log.jsonl").read_text().count("\n") == 1
    assert not (tmp_path / "tensorboard").exists()


def test_other_ranks_write_nothing(tmp_path: Path):
    logger = RunLogger(tmp_path, enabled=False)
    logger.log({"step": 1, "loss": 3.0})
    logger.close()
    assert not (tmp_path / "log.jsonl").exists()
