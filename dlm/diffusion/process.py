"""The forward (noising) process q(z_t | x) of absorbing-state diffusion.

Each token is replaced by [MASK] independently with probability 1 − α(t). Noise levels are
drawn per sequence with antithetic (stratified) sampling: t_i = (u + i/B) mod 1 with one uniform
u per batch, which keeps the estimator unbiased and cuts its variance.

SUBS (MDLM §3.2) needs no code of its own here: the loss scores masked positions only, with the
[MASK] logit at −inf, and samplers only ever write to masked positions, so visible tokens are
carried through unchanged.
"""

from __future__ import annotations

import torch

from dlm.diffusion.schedules import Schedule


def sample_t(batch: int, device: torch.device | str = "cpu",
             generator: torch.Generator | None = None, antithetic: bool = True) -> torch.Tensor:
    """(batch,) noise levels in [0, 1), uniform marginally; stratified when `antithetic`."""
    if not antithetic:
        return torch.rand(batch, generator=generator, device="cpu").to(device)
    u = torch.rand(1, generator=generator)
    offsets = torch.arange(batch, dtype=torch.float32) / batch
    t = (u + offsets) % 1.0
    return t[torch.randperm(batch, generator=generator)].to(device)


def mask_tokens(x: torch.Tensor, t: torch.Tensor, schedule: Schedule, mask_id: int,
                generator: torch.Generator | None = None,
                keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """z_t ~ q(z_t | x). x: (B, T) ids; t: (B,). Returns (z_t, masked) with masked (B, T) bool.

    `keep` (B, T) bool marks positions that are never masked (a prompt).
    """
    mask_prob = (1 - schedule.alpha(t.double())).float()[:, None]  # (B, 1)
    u = torch.rand(x.shape, generator=generator, device="cpu").to(x.device)
    masked = u < mask_prob
    if keep is not None:
        masked &= ~keep
    return torch.where(masked, torch.full_like(x, mask_id), x), masked

