"""What a training run is at one moment, and what its checkpoints hold.

`TrainState` owns the model (and its DDP/FSDP wrapper), the EMA, the optimizer and the data
loader, with the counters: step, tokens seen and the training time of earlier sessions. A
checkpoint is this state written out (`checkpoint_payload`) and `restore` reads it back, so a
resumed run continues exactly where the saved one was: same weights, optimizer moments, batch
order and RNG states. The masking noise needs no saving: it is a pure function of
(seed, step, micro-batch, rank) (`noise_seed`).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from dlm.data.loader import RandomWindows
from dlm.errors import DlmError
from dlm.model.transformer import Transformer
from dlm.run_folder import clone_state, model_state
from dlm.train.distributed import (
    full_state_dicts,
    load_full_optimizer_state,
    optimizer_state_by_index,
    optimizer_state_by_name,
)
from dlm.train.ema import EMA


@dataclass
class TrainState:
    model: Transformer
    """The network itself (unwrapped): its parameters are what checkpoints hold."""
    wrapped: torch.nn.Module
    """DDP or FSDP2 around `model` under torchrun; `model` itself in one process."""
    compiled: torch.nn.Module
    """What the forward pass runs through: `wrapped`, torch.compile'd when enabled."""
    optimizer: torch.optim.Optimizer
    ema: EMA | None
    loader: RandomWindows
    fsdp: bool = False
    step: int = 0
    """Optimizer steps taken (skipped non-finite steps count too: the data and noise moved on)."""
    tokens_seen: int = 0
    elapsed_before: float = 0.0
    """Training seconds of earlier sessions: a time budget spans resumes."""
    started_at: float = field(default_factory=time.time)
    """When this session's training began (wall clock)."""

    def elapsed(self) -> float:
        """Training seconds so far, earlier sessions included."""
        return self.elapsed_before + time.time() - self.started_at

    def checkpoint_payload(self, is_main: bool) -> tuple[dict[str, dict[str, torch.Tensor]], dict] | None:
        """(weights by file name, trainer state) to save; None on ranks other than the main one.

        Under FSDP gathering the full state is a collective, so every rank must call this."""
        if self.fsdp:
            raw, optim_state = full_state_dicts(self.model, self.optimizer)
            if self.ema is not None:
                with self.ema.swapped_in(self.model):
                    averaged, _ = full_state_dicts(self.model, None)
        if not is_main:
            return None
        if self.fsdp:
            weights = {"model.safetensors": clone_state(raw)}
            if self.ema is not None:
                weights["ema.safetensors"] = clone_state(averaged)
        else:
            optim_state = self.optimizer.state_dict()
            weights = {"model.safetensors": model_state(self.model)}
            if self.ema is not None:
                with self.ema.swapped_in(self.model):
                    weights["ema.safetensors"] = model_state(self.model)
        state = {"optimizer": optim_state, "optimizer_format": "fsdp-full" if self.fsdp else "torch",
                 "loader": self.loader.state_dict(), "rng": rng_state(),
                 "step": self.step, "tokens_seen": self.tokens_seen,
                 "elapsed": self.elapsed(), "ema_updates": self.ema.updates if self.ema else 0}
        return weights, state

    def restore(self, saved: dict, ema_start: torch.nn.Module | None) -> None:
        """Continue from a checkpoint's trainer state. The weights are already in the model (they
        go in before sharding); `ema_start` holds the checkpoint's EMA weights, laid out like the model."""
        # Either optimizer format loads either way: a run moves between DDP, FSDP and one process.
        optim_state, by_name = saved["optimizer"], saved.get("optimizer_format") == "fsdp-full"
        if self.fsdp:
            load_full_optimizer_state(self.model, self.optimizer, optim_state if by_name else
                                      optimizer_state_by_name(self.optimizer, self.model, optim_state))
        else:
            try:
                self.optimizer.load_state_dict(optimizer_state_by_index(optim_state) if by_name else optim_state)
            except (ValueError, KeyError) as e:
                raise DlmError(f"the checkpoint's optimizer state does not fit this run's optimizer ({e}); resume "
                               "with the train.optimizer it was trained with, or pass --fresh-optimizer") from None
        self.loader.load_state_dict(saved["loader"])
        set_rng_state(saved["rng"])
        self.step, self.tokens_seen, self.elapsed_before = saved["step"], saved["tokens_seen"], saved["elapsed"]
        if self.ema is not None and ema_start is not None:
            self.ema.load_state_dict({n: p.detach().float() for n, p in ema_start.named_parameters()},
                                     saved.get("ema_updates", self.step))


def rng_state() -> dict:
    # Plain Python types only: trainer_state.pt is loaded with weights_only=True, which refuses
    # numpy arrays (np.random.get_state() holds one).
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = (name, keys.tolist(), int(pos), int(has_gauss), float(cached))
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def noise_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """Masking noise is a pure function of (seed, step, micro-batch, rank): nothing to save, and a
    resumed run draws exactly the noise the uninterrupted run would have drawn."""
    return (seed * 1_000_003 + step * 4_099 + micro * 131 + rank) % (2**63 - 1)
