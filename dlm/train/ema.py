"""Exponential moving average of the weights, kept in float32 beside the model.

decay_t = min(decay, (1 + t)/(10 + t)) at update t: early on the average follows the weights
closely instead of dragging in the random initialisation.
"""

from __future__ import annotations

import contextlib

import torch


class EMA:
    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.shadow = {name: p.detach().float().clone() for name, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        names = list(self.shadow)
        params = dict(model.named_parameters())
        torch._foreach_lerp_([self.shadow[n] for n in names], [params[n].detach().float() for n in names],
                             1.0 - decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor], updates: int) -> None:
        for name, value in state.items():
            self.shadow[name].copy_(value)
        self.updates = updates

    @contextlib.contextmanager
    def swapped_in(self, model: torch.nn.Module):
        """Temporarily load the averaged weights into `model` (for validation)."""
        params = dict(model.named_parameters())
        backup = {n: p.detach().clone() for n, p in params.items()}
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(self.shadow[n])
        try:
            yield model
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(backup[n])
