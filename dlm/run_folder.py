"""A run on disk: the folder `dlm train --out` writes and every reader loads.

    RUN/config.json          the resolved RunConfig
    RUN/tokenizer.json
    RUN/log.jsonl            training records (dlm.train.logging)
    RUN/checkpoints/step-00001000/
        model.safetensors    weights (safetensors: no code runs on load)
        ema.safetensors      averaged weights, when EMA is on (used by default for eval and sampling)
        trainer_state.pt     optimizer, RNG and loader state (loaded with weights_only=True)
        manifest.json        step and each file's size and sha256, written last
    RUN/best.json            the checkpoint of the lowest quick validation loss (train.keep_best)

A checkpoint is written under a temporary name and renamed into place when complete, so a
crash never leaves a torn checkpoint under a real name; one whose files do not match its
manifest is skipped with a message. Pruning keeps the newest `keep_last` *intact* checkpoints,
the one just written and the best one (`RUN/best.json`; `--ckpt RUN/best` finds it); it never deletes a
damaged one (the user decides) and says so when it deletes one newer than the step being saved. A
full disk stops the save cleanly, naming the bytes needed, with the earlier checkpoints untouched.

One writer per run: a trainer holds `RUN/train.lock` (an flock, released by the kernel however the
process dies, so `kill -9` never leaves a stale lock) for its whole life. Readers never take it.

Training writes through this module and inference reads through it; neither knows the other.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from dlm.config import RunConfig
from dlm.errors import DlmError
from dlm.io import atomic_write_json, sha256_file
from dlm.tokenizers import Tokenizer, load_tokenizer

MANIFEST = "manifest.json"
BEST = "best.json"
TRAINER_STATE = "trainer_state.pt"
LOCK = "train.lock"


class RunFolder:
    """The files of one run, by name; nothing is read until asked."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._intact: dict[Path, int] = {}  # checkpoint → manifest mtime when it last verified

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

    @property
    def best_path(self) -> Path:
        return self.path / BEST

    def best_record(self) -> dict | None:
        """{"step", "val_loss", "checkpoint"} of the lowest validation loss so far, or None (none recorded,
        or a file that does not parse: the newest checkpoint serves instead)."""
        try:
            record = json.loads(self.best_path.read_text(encoding="utf-8"))
            return {"step": int(record["step"]), "val_loss": float(record["val_loss"]),
                    "checkpoint": str(record["checkpoint"])}
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def mark_best(self, step: int, val_loss: float) -> None:
        """Name checkpoint `step` (already saved) the best: pruning keeps it until a better one is marked."""
        atomic_write_json(self.best_path, {"step": step, "val_loss": val_loss,
                                           "checkpoint": checkpoint_name(step)})

    def best_checkpoint(self) -> Path | None:
        """The checkpoint best.json names, when it is there."""
        record = self.best_record()
        if record is None or not (self.checkpoints_dir / record["checkpoint"]).is_dir():
            return None
        return self.checkpoints_dir / record["checkpoint"]

    def checkpoints(self) -> list[Path]:
        """Checkpoint folders, oldest first (complete or not)."""
        if not self.checkpoints_dir.is_dir():
            return []
        return sorted(p for p in self.checkpoints_dir.iterdir() if p.is_dir() and p.name.startswith("step-"))

    def latest_checkpoint(self, quiet: bool = False) -> Path | None:
        """The newest intact checkpoint; damaged ones are skipped with a message on stderr."""
        for ckpt in reversed(self.checkpoints()):
            problem = self.checkpoint_problem(ckpt)
            if problem is None:
                return ckpt
            if not quiet:
                print(f"dlm: skipping checkpoint {ckpt}: {problem}", file=sys.stderr)
        return None

    def damaged_checkpoints(self) -> dict[Path, str]:
        """Checkpoint folders that fail verification → what is wrong with each."""
        problems = {ckpt: self.checkpoint_problem(ckpt) for ckpt in self.checkpoints()}
        return {ckpt: problem for ckpt, problem in problems.items() if problem is not None}

    def checkpoint_problem(self, ckpt: Path) -> str | None:
        """verify_checkpoint, remembered while the manifest is unchanged (hashing is not free)."""
        try:
            stamp = (ckpt / MANIFEST).stat().st_mtime_ns
        except OSError:
            stamp = None
        if stamp is not None and self._intact.get(ckpt) == stamp:
            return None
        problem = verify_checkpoint(ckpt)
        if problem is None and stamp is not None:
            self._intact[ckpt] = stamp
        return problem

    def lock(self) -> RunLock:
        """Take the run's writer lock, or fail naming the process that holds it."""
        self.path.mkdir(parents=True, exist_ok=True)
        return RunLock(self.path / LOCK)

    def save_checkpoint(self, step: int, weights: dict[str, dict[str, torch.Tensor]], trainer_state: dict,
                        keep_last: int = 2) -> Path:
        """Write checkpoint `step` atomically, then prune. weights: file name → state dict
        (model.safetensors, ema.safetensors); trainer_state: plain tensors and Python values
        (loaded with weights_only). A full disk raises DlmError and leaves every earlier checkpoint."""
        root = self.checkpoints_dir
        root.mkdir(parents=True, exist_ok=True)
        final = root / checkpoint_name(step)
        for stale in root.glob(".tmp-*"):  # left by a killed run (the lock says no one else is writing)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = root / f".tmp-{final.name}-{os.getpid()}"
        try:
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
        except (OSError, RuntimeError, SafetensorError) as e:  # the writers wrap I/O errors their own ways
            shutil.rmtree(tmp, ignore_errors=True)
            raise _save_error(e, root, final.name, weights, trainer_state) from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if final.exists():  # re-saving a step: after a stop right after a periodic save, or a resume
            if self.checkpoint_problem(final) is None:
                _remove(final)
            else:  # a damaged one is the user's to judge: set aside, never deleted
                aside = root / f"damaged-{final.name}-{time.strftime('%Y%m%d-%H%M%S')}"
                os.replace(final, aside)
                print(f"dlm: the damaged checkpoint {final.name} is kept as {aside.name}", file=sys.stderr)
        os.replace(tmp, final)
        _fsync_dir(root)
        self._intact[final] = (final / MANIFEST).stat().st_mtime_ns
        self.prune(keep_last, final)
        return final

    def prune(self, keep_last: int, just_written: Path) -> list[Path]:
        """Delete intact checkpoints beyond the newest `keep_last` (by step), never `just_written`, the
        best one or a damaged one. Returns what was deleted."""
        if keep_last <= 0:
            return []
        intact = [c for c in self.checkpoints() if self.checkpoint_problem(c) is None]
        kept = (just_written, self.best_checkpoint())
        doomed = [c for c in intact[:-keep_last] if c not in kept]
        for ckpt in doomed:
            if ckpt.name > just_written.name:
                print(f"dlm: deleting checkpoint {ckpt.name}, newer than the {just_written.name} just saved, "
                      f"to keep the newest {keep_last} (train.keep_last)", file=sys.stderr)
            _remove(ckpt)
            self._intact.pop(ckpt, None)
        return doomed


class RunLock:
    """An exclusive flock on RUN/train.lock, holding the holder's pid; `release` (or process death) frees it."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            import fcntl
        except ImportError:  # no flock on this platform: one writer is the user's to ensure
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(self._fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(self._fd)
            self._fd = None
            raise DlmError(f"{path.parent} is being trained by {holder} (it holds {path}); wait for it to end or "
                           "stop it, or train into another --out folder") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"process {os.getpid()} on {os.uname().nodename}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def _tensor_bytes(obj) -> int:
    """Bytes of every tensor inside nested dicts, lists and tuples (what a checkpoint writes)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _megabytes(n: int) -> str:
    return f"{n / 2**20:,.1f} MB"


def _save_error(error: Exception, root: Path, name: str, weights: dict, trainer_state: dict) -> DlmError:
    needed = _tensor_bytes(weights) + _tensor_bytes(trainer_state)
    free = shutil.disk_usage(root).free
    text = str(error)
    full = (getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left" in text
            or "os error 28" in text or free < needed)
    if full:
        return DlmError(f"no space left on the device of {root} to save checkpoint {name}: it needs about "
                        f"{_megabytes(needed)}, {_megabytes(free)} are free; the earlier checkpoints are intact — "
                        "free some space (or lower train.keep_last), then continue with --resume")
    reason = getattr(error, "strerror", None) or text.splitlines()[0] if text else type(error).__name__
    return DlmError(f"cannot write checkpoint {name} in {root} ({reason}); the earlier checkpoints are intact — "
                    "fix the folder's permissions or disk, then continue with --resume")


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


def checkpoint_name(step: int) -> str:
    """The folder name of checkpoint `step` under RUN/checkpoints."""
    return f"step-{step:08d}"


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
    except (ValueError, KeyError, TypeError, AttributeError):  # ValueError: bad JSON or not UTF-8 at all
        return "manifest is unreadable"
    return None


def checkpoint_step(ckpt: Path) -> int:
    """The step a checkpoint was saved at: from its manifest, else from its folder name."""
    try:
        return int(json.loads((ckpt / MANIFEST).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return int(ckpt.name.removeprefix("step-"))


def weights_intact(ckpt: Path, name: str = "model.safetensors") -> bool:
    """Whether one weights file of a checkpoint matches its manifest entry (the rest may be damaged)."""
    try:
        info = json.loads((ckpt / MANIFEST).read_text())["files"][name]
        path = ckpt / name
        return path.stat().st_size == info["bytes"] and sha256_file(path) == info["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def weights_readable(ckpt: Path, name: str = "model.safetensors") -> str | None:
    """None if a weights file opens as safetensors (its header parses), else why not. Cheap: reads
    the header only. Catches a file the manifest vouches for that is not safetensors at all."""
    try:
        with safe_open(str(ckpt / name), framework="pt") as f:
            f.keys()
    except (SafetensorError, OSError) as e:
        return f"{name} is not a readable safetensors file ({str(e).splitlines()[0][:80]})"
    return None


def names_best_of_run(path: str | Path) -> bool:
    """RUN/best: a run folder's best checkpoint (RUN/best.json), though no folder of that name exists. From the
    run's parent, `run/best` reads like a Hub id (user/name); it is the local run's."""
    path = Path(path)
    return not path.exists() and path.name == "best" and RunFolder(path.parent).has_config()


def is_hub_repo_id(path: str | Path) -> bool:
    """A name of the Hub's shape, user/name, that is nothing here (not even a local RUN/best)."""
    parts = str(path).split("/")
    return (len(parts) == 2 and all(parts) and not parts[0].startswith(".") and not Path(path).exists()
            and not names_best_of_run(path))


def locate_checkpoint(path: str | Path) -> tuple[RunFolder, Path]:
    """(run, checkpoint folder) for a run folder (its newest intact checkpoint), RUN/best (the checkpoint of
    its lowest validation loss) or a checkpoint folder."""
    path = Path(path)
    if names_best_of_run(path):
        return locate_best(RunFolder(path.parent))
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


def locate_best(run: RunFolder) -> tuple[RunFolder, Path]:
    """(run, its best checkpoint), or a one-line error naming why there is none."""
    record = run.best_record()
    if record is None:
        raise DlmError(f"run {run.path} records no best checkpoint ({run.best_path} is missing or unreadable: "
                       "it trained with train.keep_best=false or before dlm kept one); pass the run folder "
                       "for its newest checkpoint")
    ckpt = run.checkpoints_dir / record["checkpoint"]
    if not ckpt.is_dir():
        raise DlmError(f"the best checkpoint of run {run.path}, {record['checkpoint']}, is gone; pass the run "
                       "folder for its newest checkpoint")
    problem = verify_checkpoint(ckpt)
    if problem:
        raise DlmError(f"the best checkpoint of run {run.path}, {ckpt.name}, is damaged: {problem}; pass the run "
                       "folder for its newest checkpoint")
    return run, ckpt
