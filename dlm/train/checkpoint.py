"""Checkpoints: atomic, verified, safe to load.

    RUN/config.json          resolved RunConfig
    RUN/tokenizer.json
    RUN/checkpoints/step-00001000/
        model.safetensors    weights (safetensors: no code runs on load)
        ema.safetensors      averaged weights, when EMA is on (used by default for eval and sampling)
        trainer_state.pt     optimizer, RNG and loader state (loaded with weights_only=True)
        manifest.json        step and each file's size and sha256, written last

A checkpoint is written under a temporary name and renamed into place when complete, so a
crash never leaves a torn checkpoint under a real name; one whose files do not match its
manifest is skipped with a message. The newest `keep_last` are kept.
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

from dlm.errors import DlmError
from dlm.io import atomic_write_json, sha256_file

MANIFEST = "manifest.json"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def clone_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Tied weights appear twice in a state dict; safetensors refuses shared storage, so clone.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return clone_state(model.state_dict())


def save_checkpoint(run_dir: Path, step: int, weights: dict[str, dict[str, torch.Tensor]], trainer_state: dict,
                    keep_last: int = 2) -> Path:
    """weights: file name → state dict (e.g. model.safetensors and ema.safetensors)."""
    ckpt_root = run_dir / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step-{step:08d}"
    for stale in ckpt_root.glob(".tmp-*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    tmp = ckpt_root / f".tmp-step-{step:08d}-{os.getpid()}"
    tmp.mkdir()
    for name, state in weights.items():
        save_file(state, str(tmp / name))
    torch.save(trainer_state, tmp / "trainer_state.pt")
    files = {}
    for name in [*weights, "trainer_state.pt"]:
        with open(tmp / name, "rb+") as f:
            os.fsync(f.fileno())
        files[name] = {"bytes": (tmp / name).stat().st_size, "sha256": sha256_file(tmp / name)}
    atomic_write_json(tmp / MANIFEST, {"step": step, "files": files})
    if final.exists():  # re-saving the same step (e.g. a stop right after a periodic save)
        _remove(final)
    os.replace(tmp, final)
    _fsync_dir(ckpt_root)
    for old in list_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
        _remove(old)
    return final


def _remove(ckpt: Path) -> None:
    """Rename out of the checkpoint namespace first, so a kill mid-delete leaves no torn step-* folder."""
    doomed = ckpt.with_name(f".tmp-delete-{ckpt.name}-{os.getpid()}")
    os.replace(ckpt, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint folders under run_dir, oldest first (complete or not)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))


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
    except (json.JSONDecodeError, KeyError, TypeError):
        return "manifest is unreadable"
    return None


def latest_checkpoint(run_dir: Path, quiet: bool = False) -> Path | None:
    """The newest intact checkpoint; damaged ones are skipped with a message on stderr."""
    for ckpt in reversed(list_checkpoints(run_dir)):
        problem = verify_checkpoint(ckpt)
        if problem is None:
            return ckpt
        if not quiet:
            print(f"dlm: skipping checkpoint {ckpt}: {problem}", file=sys.stderr)
    return None


def find_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """(run_dir, checkpoint_dir) for a run folder or a checkpoint folder inside one."""
    path = Path(path)
    if not path.exists():
        raise DlmError(f"checkpoint {path} not found; pass the --out folder of a training run")
    if (path / MANIFEST).is_file():
        problem = verify_checkpoint(path)
        if problem:
            raise DlmError(f"checkpoint {path} is damaged: {problem}; use another checkpoint of the run")
        return path.parent.parent, path
    if not (path / "config.json").is_file():
        raise DlmError(f"{path} is not a dlm run folder (no config.json); pass the --out folder of a training run")
    ckpt = latest_checkpoint(path)
    if ckpt is None:
        raise DlmError(f"run {path} has no intact checkpoint yet; train it (or resume) until one is saved")
    return path, ckpt


def load_model_weights(model: torch.nn.Module, ckpt: Path, filename: str = "model.safetensors") -> None:
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
        return torch.load(ckpt / "trainer_state.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types; all mean the same here
        raise DlmError(f"cannot read {ckpt / 'trainer_state.pt'} ({type(e).__name__}); "
                       "the checkpoint is corrupted — resume from an older one") from None
