"""A run on disk: the folder `dlm train --out` writes and every reader loads.

    RUN/config.json          the resolved RunConfig
    RUN/tokenizer.json
    RUN/log.jsonl            training records (dlm.train.logging)
    RUN/checkpoints/step-00001000/
        model.safetensors    weights (safetensors: no code runs on load)
        ema.safetensors      averaged weights, when EMA is on (used by default for eval and sampling)
        trainer_state.pt     optimizer, RNG and loader state (loaded with weights_only=True)
        manifest.json        step and each file's size and sha256, written last

A checkpoint is written under a temporary name and renamed into place when complete, so a
crash never leaves a torn checkpoint under a real name; one whose files do not match its
manifest is skipped with a message. The newest `keep_last` are kept.

Training writes through this module and inference reads through it; neither knows the other.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dlm.config import RunConfig
from dlm.errors import DlmError
from dlm.io import atomic_write_json, sha256_file
from dlm.tokenizers import Tokenizer, load_tokenizer

MANIFEST = "manifest.json"
TRAINER_STATE = "trainer_state.pt"


class RunFolder:
    """The files of one run, by name; nothing is read until asked."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def tokenizer_path(self) -> Path:
        return self.path / "tokenizer.json"

    @property
    def log_path(self) -> Path:
        return self.path / "log.jsonl"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    def has_config(self) -> bool:
        return self.config_path.is_file()

    def read_config(self) -> RunConfig:
        try:
            return RunConfig.from_dict(json.loads(self.config_path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise DlmError(f"{self.config_path} not found; pass the --out folder of a training run") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DlmError(f"{self.config_path} is not valid JSON ({e}); restore it from a backup") from None

    def write_config(self, cfg: RunConfig) -> None:
        atomic_write_json(self.config_path, cfg.to_dict())

    def read_tokenizer(self) -> Tokenizer:
        return load_tokenizer(self.tokenizer_path)

    def write_tokenizer(self, tokenizer: Tokenizer) -> None:
        tokenizer.save(self.tokenizer_path)

    def checkpoints(self) -> list[Path]:
        """Checkpoint folders, oldest first (complete or not)."""
        if not self.checkpoints_dir.is_dir():
            return []
        return sorted(p for p in self.checkpoints_dir.iterdir() if p.is_dir() and p.name.startswith("step-"))

    def latest_checkpoint(self, quiet: bool = False) -> Path | None:
        """The newest intact checkpoint; damaged ones are skipped with a message on stderr."""
        for ckpt in reversed(self.checkpoints()):
            problem = verify_checkpoint(ckpt)
            if problem is None:
                return ckpt
            if not quiet:
                print(f"dlm: skipping checkpoint {ckpt}: {problem}", file=sys.stderr)
        return None

    def save_checkpoint(self, step: int, weights: dict[str, dict[str, torch.Tensor]], trainer_state: dict,
                        keep_last: int = 2) -> Path:
        """Write checkpoint `step` atomically. weights: file name → state dict (model.safetensors,
        ema.safetensors); trainer_state: plain tensors and Python values (loaded with weights_only)."""
        root = self.checkpoints_dir
        root.mkdir(parents=True, exist_ok=True)
        final = root / f"step-{step:08d}"
        for stale in root.glob(".tmp-*"):  # left by a killed run
            shutil.rmtree(stale, ignore_errors=True)
        tmp = root / f".tmp-step-{step:08d}-{os.getpid()}"
        tmp.mkdir()
        for name, state in weights.items():
            save_file(state, str(tmp / name))
        torch.save(trainer_state, tmp / TRAINER_STATE)
        files = {}
        for name in [*weights, TRAINER_STATE]:
            with open(tmp / name, "rb+") as f:
                os.fsync(f.fileno())
            files[name] = {"bytes": (tmp / name).stat().st_size, "sha256": sha256_file(tmp / name)}
        atomic_write_json(tmp / MANIFEST, {"step": step, "files": files})
        if final.exists():  # re-saving the same step (e.g. a stop right after a periodic save)
            _remove(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        for old in self.checkpoints()[:-keep_last] if keep_last > 0 else []:
            _remove(old)
        return final


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(ckpt: Path) -> None:
    """Rename out of the checkpoint namespace first, so a kill mid-delete leaves no torn step-* folder."""
    doomed = ckpt.with_name(f".tmp-delete-{ckpt.name}-{os.getpid()}")
    os.replace(ckpt, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def verify_checkpoint(ckpt: Path) -> str | None:
    """None if ckpt is complete and intact, else what is wrong with it."""
    manifest_path = ckpt / MANIFEST
    if not manifest_path.is_file():
        return "no manifest (incomplete write)"
    try:
        manifest = json.loads(manifest_path.read_text())
        for name, info in manifest["files"].items():
            path = ckpt / name
            if not path.is_file():
                return f"{name} is missing"
            if path.stat().st_size != info["bytes"]:
                return f"{name} has {path.stat().st_size} bytes, expected {info['bytes']} (truncated)"
            if sha256_file(path) != info["sha256"]:
                return f"{name} fails its sha256 check (corrupted)"
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
        return "manifest is unreadable"
    return None


def locate_checkpoint(path: str | Path) -> tuple[RunFolder, Path]:
    """(run, checkpoint folder) for a run folder (its newest intact checkpoint) or a checkpoint folder."""
    path = Path(path)
    if not path.exists():
        raise DlmError(f"checkpoint {path} not found; pass the --out folder of a training run")
    if (path / MANIFEST).is_file():
        problem = verify_checkpoint(path)
        if problem:
            raise DlmError(f"checkpoint {path} is damaged: {problem}; use another checkpoint of the run")
        return RunFolder(path.parent.parent), path
    run = RunFolder(path)
    if not run.has_config():
        raise DlmError(f"{path} is not a dlm run folder (no config.json); pass the --out folder of a training run")
    ckpt = run.latest_checkpoint()
    if ckpt is None:
        raise DlmError(f"run {path} has no intact checkpoint yet; train it (or resume) until one is saved")
    return run, ckpt


def clone_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU copies, ready for safetensors (which refuses the shared storage of tied weights)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return clone_state(model.state_dict())


def load_weights(model: torch.nn.Module, ckpt: Path, filename: str = "model.safetensors") -> None:
    """Load one weights file of a checkpoint into `model`, on the model's device."""
    try:
        state = load_file(str(ckpt / filename), device=str(next(model.parameters()).device))
    except (SafetensorError, OSError) as e:
        raise DlmError(f"cannot read {ckpt / filename} ({e}); the checkpoint is corrupted") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("rope_")]
    if missing or unexpected:
        raise DlmError(f"checkpoint {ckpt} does not match the model config (missing {missing[:3]}, "
                       f"unexpected {unexpected[:3]}); was config.json edited?")


def load_trainer_state(ckpt: Path) -> dict:
    try:
        return torch.load(ckpt / TRAINER_STATE, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types; all mean the same here
        raise DlmError(f"cannot read {ckpt / TRAINER_STATE} ({type(e).__name__}); "
                       "the checkpoint is corrupted — resume from an older one") from None
