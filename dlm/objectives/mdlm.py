"""The MDLM objective: a continuous-time negative ELBO, in nats per token.

For a sequence x of L tokens and a schedule α(t),

    −log p(x) ≤ ∫₀¹ −α'(t)/(1 − α(t)) · E_{z_t}[ Σ_{l masked in z_t} −log p_θ(x_l | z_t) ] dt
               + reconstruction(t=0) + prior(t=1),

(Sahoo et al. 2024, eq. 10; Shi et al. 2024). With t ~ U[0, 1] the integrand is an unbiased
one-sample estimate. We divide by L, so the figure is a bound on the NLL *per token*.

Boundary terms (zero for linear and cosine, where α(0) = 1 and α(1) = 0):
  * reconstruction: if α(0) < 1, z_0 still hides tokens; we add Σ_masked −log p_θ(x_l | z_0)/L.
  * prior: z_1 keeps each token with probability α(1). The prior p(z_1) puts that mass on a
    uniform real token, so KL(q(z_1|x) ‖ p(z_1)) = α(1)·log V_real per token (exact, analytic).

The loss returns sums and counts (nll_sum, n_tokens) so accumulation over micro-batches and
ranks divides once, exactly.

Two training-time options, off by default (only `dlm.objectives.make_objective` turns them on, from
the run config; `dlm eval` never does, so its figure stays the NELBO):
  * edit corruption (Seed Diffusion): after masking, each visible token is replaced with
    probability edit_prob by a uniform real token, and the loss gains
    edit_weight · Σ_{l visible} −log p_θ(x_l | z) / L over every visible position, corrupted or
    not, so the model learns to keep right tokens and fix wrong ones;
  * prompts (for classifier-free guidance): with probability prompt_prob a sequence's prefix of
    uniform length in [1, L//2] is never masked, never corrupted and never scored (its positions
    add 0; the sum is still divided by L). The other sequences are the unconditional branch.
With either on, the training loss is no longer the NELBO: the edit term is not part of the bound
(and the masked term conditions on corrupted context), and a prompt makes it a conditional bound
on the rest of the sequence only.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from dlm.diffusion.process import corrupt_tokens, mask_tokens, sample_prompt, sample_t
from dlm.diffusion.schedules import Schedule
from dlm.objectives.cross_entropy import token_cross_entropy
from dlm.objectives.output import LossOutput
from dlm.objectives.scored_rows import as_rows_argument, flat_rows, rows_nll, takes_rows

# Noise levels below T_MIN are raised to it (the weight −α'/(1−α) explodes as t → 0 while almost
# nothing is masked). This replaces the integrand on [0, T_MIN) by its value at T_MIN; as the
# integrand (expected per-token NLL of the masked tokens) grows with the noise level, this can
# only raise the estimate, and by at most T_MIN · (its value) ≈ 1e-5 nats/token: still a bound.
T_MIN = 1e-5
# The `clipped` weighting caps −α'/(1−α) here: for the linear schedule, t < 1/5 weighs as t = 1/5.
WEIGHT_CAP = 5.0
WEIGHTINGS = ("elbo", "flat", "clipped")


def token_nll(model: nn.Module, x: torch.Tensor, z: torch.Tensor, t: torch.Tensor,
              mask_id: int) -> torch.Tensor:
    """(B, T) −log p_θ(x | z_t) at every position (SUBS: the [MASK] logit is −inf)."""
    logits = model(z, t=t).float()  # (B, T, V)
    logits[..., mask_id] = float("-inf")
    return token_cross_entropy(logits, x)  # (B, T)


def masked_nll(model: nn.Module, x: torch.Tensor, z: torch.Tensor, masked: torch.Tensor,
               t: torch.Tensor, mask_id: int) -> torch.Tensor:
    """(B, T) −log p_θ(x | z_t) at masked positions, 0 elsewhere (SUBS: the [MASK] logit is −inf); the
    output head computes the masked rows only where the model allows it (dlm.objectives.scored_rows)."""
    index = flat_rows(masked) if takes_rows(model) else None
    rows = None if index is None else as_rows_argument(index)
    if rows is None:
        return token_nll(model, x, z, t, mask_id) * masked
    logits = model(z, t=t, rows=rows).float()  # (N, V)
    logits[:, mask_id] = float("-inf")
    return rows_nll(logits, x, index)


def loss_weight(schedule: Schedule, t: torch.Tensor, weighting: str = "elbo", cap: float | None = None) -> torch.Tensor:
    """(B,) the weight of a masked token's −log p at noise level t.

    elbo: −α'(t)/(1 − α(t)), the NELBO's (1/t for the linear schedule); flat: 1, a plain masked
    cross-entropy; clipped: the ELBO weight capped at `cap` (default WEIGHT_CAP; bounded variance at
    small t; cap 1 is flat for the linear schedule).
    Only `elbo` makes the loss a bound on the NLL."""
    if weighting == "flat":
        return torch.ones_like(t)
    alpha, alpha_prime = schedule.alpha(t), schedule.alpha_prime(t)
    weight = -alpha_prime / (1 - alpha).clamp_min(1e-12)
    return weight.clamp(max=cap or WEIGHT_CAP) if weighting == "clipped" else weight


def mdlm_loss(model: nn.Module, x: torch.Tensor, schedule: Schedule, mask_id: int,
              n_real_tokens: int | None = None, generator: torch.Generator | None = None,
              t: torch.Tensor | None = None, *, edit_prob: float = 0.0, edit_weight: float = 1.0,
              prompt_prob: float = 0.0, real_ids: torch.Tensor | None = None, antithetic: bool = True,
              weighting: str = "elbo", weight_cap: float | None = None, mask_scale: torch.Tensor | None = None,
              prompt_mask: torch.Tensor | None = None, token_weight: torch.Tensor | None = None) -> LossOutput:
    """One-sample estimate of the NELBO of each sequence in x (B, L).

    The keyword options are the training-time additions of the module docstring, off by default;
    with edit_prob > 0, prompt_prob > 0, a weighting other than 'elbo' or a `mask_scale` the result
    is a training loss, not the NELBO. `real_ids` (V_real,) are the ids corrupted tokens are drawn
    from (needed when edit_prob > 0); `n_real_tokens`, the ids text can produce, sizes the prior
    term (needed when α(1) > 0); `mask_scale` (B, L) multiplies each token's mask probability.
    Chat fine-tuning passes `prompt_mask` (B, L) bool, positions given and never masked or scored
    (the conversation so far), and `token_weight` (B, L), each scored position's weight (1 on the
    reply and its end-of-turn token, lower or 0 on the filler after it).
    """
    B, L = x.shape
    if t is None:
        t = sample_t(B, x.device, generator, antithetic=antithetic)
    t = t.clamp(min=T_MIN)
    prompt = sample_prompt(B, L, prompt_prob, x.device, generator) if prompt_prob > 0 else None  # (B, L)
    if prompt_mask is not None:
        prompt = prompt_mask if prompt is None else prompt | prompt_mask
    z, masked = mask_tokens(x, t, schedule, mask_id, generator, keep=prompt, scale=mask_scale)
    if edit_prob > 0:
        assert real_ids is not None, "edit corruption draws from real_ids; pass them"
        z, _ = corrupt_tokens(z, masked, edit_prob, real_ids, generator, keep=prompt)
    weight = loss_weight(schedule, t, weighting, weight_cap)  # (B,)
    # (B, L); the edit term reads every position, the bound the masked ones only
    nll = token_nll(model, x, z, t, mask_id) if edit_prob > 0 else masked_nll(model, x, z, masked, t, mask_id)
    scored = masked if token_weight is None else masked * token_weight  # (B, L)
    per_seq = ((nll * scored).sum(1) * weight) / L
    if edit_prob > 0:  # keep-or-fix term at every visible, non-prompt position
        visible = ~masked if prompt is None else ~masked & ~prompt  # (B, L)
        per_seq = per_seq + edit_weight * (nll * visible).sum(1) / L

    if weighting != "elbo":  # the boundary terms belong to the bound only
        return LossOutput(per_seq.sum() * L, B * L, per_seq.detach(), t)
    alpha_0, alpha_1 = schedule.alpha(torch.tensor([0.0, 1.0], dtype=torch.float64)).tolist()
    if alpha_0 < 1 - 1e-9:  # reconstruction term at t = 0
        t0 = torch.zeros(B, device=x.device)
        z0, masked0 = mask_tokens(x, t0, schedule, mask_id, generator, keep=prompt)
        per_seq = per_seq + masked_nll(model, x, z0, masked0, t0, mask_id).sum(1) / L
    if alpha_1 > 1e-9:  # prior term at t = 1 (analytic)
        assert n_real_tokens is not None, f"schedule {schedule.name} leaves α(1) > 0: pass n_real_tokens"
        prior = alpha_1 * math.log(n_real_tokens)
        if prompt is not None:  # prompt tokens are given, not generated: they add nothing
            prior = prior * (~prompt).sum(1) / L  # (B,)
        per_seq = per_seq + prior
    return LossOutput(per_seq.sum() * L, B * L, per_seq.detach(), t)
