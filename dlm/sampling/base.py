"""Shared sampling helpers: temperature, top-k, top-p, and categorical draws in float64.

Categorical draws use the Gumbel-max trick with float64 noise. With float32 noise the largest
Gumbel values are truncated (−log(−log u) cannot exceed ~16.6 when u is a float32 below 1), which
silently sharpens the distribution — a lower effective temperature (Zheng et al. 2024).
"""

from __future__ import annotations

import torch


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k / nucleus top-p to −inf. logits: (..., V), float."""
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p (the top one is kept).
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def gumbel_noise(shape: torch.Size, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    u = torch.rand(shape, dtype=torch.float64, generator=generator).clamp_(min=1e-300)
    return (-torch.log(-torch.log(u))).to(device)


def sample_categorical(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one id per row of logits (..., V). Returns (ids, log-probability of each drawn id)
    under the filtered, temperature-scaled distribution. temperature 0 means greedy."""
    logits = filter_logits(logits.double(), top_k, top_p)
    if temperature <= 0:
        ids = logits.argmax(dim=-1)
        return ids, torch.zeros(ids.shape, dtype=torch.float64, device=logits.device)
    log_probs = (logits / temperature).log_softmax(dim=-1)
    ids = (log_probs + gumbel_noise(log_probs.shape, generator, logits.device)).argmax(dim=-1)
    return ids, log_probs.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
