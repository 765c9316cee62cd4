"""Noise schedules in α-space.

α(t) is the probability that a token survives (is still unmasked) at noise level t ∈ [0, 1];
each schedule gives α(t) and its derivative α'(t). The MDLM loss weight −α'/(1−α) is written
once, in `dlm.objectives.mdlm`.

Schedules whose α(0) < 1 (clipped cosine, sigmoid) or α(1) > 0 (log-linear, clipped cosine,
sigmoid) leave boundary terms in the bound; `dlm.objectives.mdlm` adds them, so the training loss
is a true bound under every schedule.
"""

from __future__ import annotations

import math

import torch


class Schedule:
    name = "base"

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def alpha_prime(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Linear(Schedule):
    """α = 1 − t: the MDLM default; weight −α'/(1−α) = 1/t."""
    name = "linear"

    def alpha(self, t):
        return 1 - t

    def alpha_prime(self, t):
        return -torch.ones_like(t)


class Cosine(Schedule):
    """α = cos(πt/2)."""
    name = "cosine"

    def alpha(self, t):
        return torch.cos(0.5 * math.pi * t)

    def alpha_prime(self, t):
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)


class LogLinear(Schedule):
    """α = 1 − (1 − ε)t with ε = 10⁻³: MDLM's log-linear σ schedule; α(1) = ε."""
    name = "loglinear"
    eps = 1e-3

    def alpha(self, t):
        return 1 - (1 - self.eps) * t

    def alpha_prime(self, t):
        return -(1 - self.eps) * torch.ones_like(t)


class Sqrt(Schedule):
    """α = 1 − √t: masks quickly at first."""
    name = "sqrt"

    def alpha(self, t):
        return 1 - torch.sqrt(t)

    def alpha_prime(self, t):
        return -0.5 / torch.sqrt(t.clamp_min(1e-12))


class ClippedCosine(Schedule):
    """α = 0.05 + 0.90·cos(πt/2): α(0) = 0.95, α(1) = 0.05 (both boundaries are open)."""
    name = "clipped-cosine"

    def alpha(self, t):
        return 0.05 + 0.90 * torch.cos(0.5 * math.pi * t)

    def alpha_prime(self, t):
        return -0.45 * math.pi * torch.sin(0.5 * math.pi * t)


class Sigmoid(Schedule):
    """α = 1/(1 + exp(10(t − 0.5))): α(0) ≈ 0.9933, α(1) ≈ 0.0067."""
    name = "sigmoid"
    k = 10.0

    def alpha(self, t):
        return torch.sigmoid(-self.k * (t - 0.5))

    def alpha_prime(self, t):
        a = self.alpha(t)
        return -self.k * a * (1 - a)


SCHEDULES: dict[str, type[Schedule]] = {
    cls.name: cls for cls in (Linear, Cosine, LogLinear, Sqrt, ClippedCosine, Sigmoid)
}


def get_schedule(name: str) -> Schedule:
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    return SCHEDULES[name]()
