"""Reverse-process samplers for masked diffusion models.

The canvas is [prompt | [MASK] × length]. Over `steps` steps from t = 1 to t = 0 every masked
position is predicted in parallel and some are committed; the prompt is never changed and no
[MASK] is left at the end.

* ancestral — MDLM's reverse step: from t to s < t each masked position is revealed with
  probability (α_s − α_t)/(1 − α_t), its token drawn from p_θ(x | z_t).
* confidence — LLaDA-style: draw a token for every masked position, then commit the k most
  confident (highest probability of the drawn token); k follows the schedule so the expected
  number of masks left matches ancestral sampling at each step.
"""

from __future__ import annotations

import torch

from dlm.diffusion.schedules import Linear, Schedule
from dlm.sampling.base import sample_categorical

DIFFUSION_SAMPLERS = ("ancestral", "confidence")


@torch.no_grad()
def diffusion_generate(model: torch.nn.Module, prompt: torch.Tensor, length: int, steps: int, mask_id: int,
                       sampler: str = "confidence", temperature: float = 1.0, top_k: int = 0,
                       top_p: float = 1.0, generator: torch.Generator | None = None,
                       schedule: Schedule | None = None, suppress_ids: tuple[int, ...] = ()) -> torch.Tensor:
    """prompt: (B, P) ids (P may be 0). Returns (B, P + length) ids with no [MASK].

    `suppress_ids` are never drawn (e.g. [PAD] and [BOS]); [MASK] never is, in any case (SUBS).
    """
    if sampler not in DIFFUSION_SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(DIFFUSION_SAMPLERS)}")
    if steps < 1 or length < 1:
        raise ValueError("steps and length must be at least 1")
    schedule = schedule or Linear()
    B, P = prompt.shape
    device = prompt.device
    x = torch.cat((prompt, torch.full((B, length), mask_id, dtype=prompt.dtype, device=device)), dim=1)
    times = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    alphas = schedule.alpha(times).clamp(0.0, 1.0)
    alphas[-1] = 1.0  # the last step reveals everything, whatever the schedule's α(0)
    time_conditioned = getattr(getattr(model, "cfg", None), "time_conditioning", False)
    for k in range(steps):
        masked = x == mask_id  # (B, T)
        if not masked.any():
            break
        t = torch.full((B,), float(times[k]), device=device)
        logits = model(x, t=t if time_conditioned else None).float()
        logits[..., [mask_id, *suppress_ids]] = float("-inf")  # SUBS: never predict [MASK]
        proposal, log_conf = sample_categorical(logits, temperature, top_k, top_p, generator)
        alpha_t, alpha_s = float(alphas[k]), float(alphas[k + 1])
        if sampler == "ancestral":
            reveal_prob = (alpha_s - alpha_t) / max(1.0 - alpha_t, 1e-12)
            u = torch.rand(masked.shape, dtype=torch.float64, generator=generator).to(device)
            commit = masked & (u < reveal_prob)
        else:
            n_masked = masked.sum(dim=1)  # (B,)
            keep_masked = round(length * (1.0 - alpha_s) / max(1.0 - float(alphas[0]), 1e-12))
            n_commit = (n_masked - min(keep_masked, length)).clamp(min=0)
            score = log_conf.masked_fill(~masked, float("-inf"))
            rank = score.argsort(dim=1, descending=True).argsort(dim=1)  # 0 = most confident
            commit = masked & (rank < n_commit[:, None])
        x = torch.where(commit, proposal.to(x.dtype), x)
    assert not (x[:, P:] == mask_id).any(), "sampler left a [MASK]"
    return x
