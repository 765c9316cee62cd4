"""The forward (noising) process q(z_t | x) of absorbing-state diffusion.

Each token is replaced by [MASK] independently with probability 1 − α(t). Noise levels are
drawn per sequence with antithetic (stratified) sampling: t_i = (u + i/B) mod 1 with one uniform
u per batch, which keeps the estimator unbiased and cuts its variance.

SUBS (MDLM §3.2) needs no code of its own here: the loss scores masked positions only, with the
[MASK] logit at −inf, and samplers only ever write to masked positions, so visible tokens are
carried through unchanged.

Training-only additions, off unless asked for (see dlm.objectives.mdlm):
  * `entropy_mask_scale`: masking probability scaled per token by its entropy under a trained AR
    twin (microDLM's entropy-weighted masking), instead of uniform;
  * `sample_prompt`: a random prefix of some sequences is a prompt, never masked or scored
    (conditional training for classifier-free guidance);
  * `corrupt_tokens`: visible tokens are replaced by uniform real tokens (Seed-Diffusion-style
    edit corruption), so the model also learns to fix wrong visible tokens.
Every random draw is made on the CPU from the caller's generator, then moved, so the noise is a
pure function of the generator's seed whatever the device.
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
                generator: torch.Generator | None = None, keep: torch.Tensor | None = None,
                scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """z_t ~ q(z_t | x). x: (B, T) ids; t: (B,). Returns (z_t, masked) with masked (B, T) bool.

    `keep` (B, T) bool marks positions that are never masked (a prompt). `scale` (B, T) multiplies
    each token's mask probability (entropy-weighted masking; the result is clamped to [0, 1]).
    """
    mask_prob = (1 - schedule.alpha(t.double())).float()[:, None]  # (B, 1)
    if scale is not None:
        mask_prob = (mask_prob * scale.float()).clamp(0.0, 1.0)  # (B, T)
    u = torch.rand(x.shape, generator=generator, device="cpu").to(x.device)
    masked = u < mask_prob
    if keep is not None:
        masked &= ~keep
    return torch.where(masked, torch.full_like(x, mask_id), x), masked



def entropy_mask_scale(entropy: torch.Tensor, mean_entropy: float) -> torch.Tensor:
    """microDLM's entropy-weighted masking: a token's mask probability is multiplied by
    clamp(2 − e_norm, 0.5, 1.5), with e_norm its entropy over the corpus mean (so 1 on average).
    Hard-to-predict tokens (high entropy) are masked less often, easy ones more."""
    return (2.0 - entropy.float() / mean_entropy).clamp(0.5, 1.5)


def sample_prompt(batch: int, length: int, prompt_prob: float, device: torch.device | str = "cpu",
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """(batch, length) bool, True on each sequence's prompt prefix.

    With probability `prompt_prob` a sequence gets a prompt whose length is uniform in
    [1, length // 2]; the others get none (an all-False row).
    """
    has_prompt = torch.rand(batch, generator=generator) < prompt_prob  # (B,)
    prompt_len = torch.randint(1, length // 2 + 1, (batch,), generator=generator) * has_prompt  # (B,)
    return (torch.arange(length)[None, :] < prompt_len[:, None]).to(device)  # (B, L)


def corrupt_tokens(z: torch.Tensor, masked: torch.Tensor, edit_prob: float, real_ids: torch.Tensor,
                   generator: torch.Generator | None = None,
                   keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace each visible token of z (B, T) with probability `edit_prob` by a uniform real id.

    `masked` (B, T) bool marks the [MASK]ed positions and `keep` (B, T) bool a prompt; neither is
    touched. `real_ids` (V_real,) holds the ids text can produce (no special token). The draw may
    give back the original token (probability 1/V_real). Returns (z', edited), edited (B, T) bool.
    """
    u = torch.rand(z.shape, generator=generator, device="cpu").to(z.device)  # (B, T)
    edited = (u < edit_prob) & ~masked
    if keep is not None:
        edited &= ~keep
    index = torch.randint(len(real_ids), z.shape, generator=generator, device="cpu")  # (B, T)
    replacement = real_ids.cpu()[index].to(z.device)  # (B, T)
    return torch.where(edited, replacement, z), edited
