"""Shared sampling helpers: temperature, top-k, top-p, and categorical draws in float64.

Categorical draws use the Gumbel-max trick with float64 noise. With float32 noise the largest
Gumbel values are truncated (−log(−log u) cannot exceed ~16.6 when u is a float32 below 1), which
silently sharpens the distribution — a lower effective temperature (Zheng et al. 2024).
"""

from __future__ import annotations

import torch

from dlm.special_ids import SpecialIds


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k / nucleus top-p to −inf. logits: (..., V), float."""
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p (the top one is kept).
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def exponential_noise(shape: torch.Size | tuple[int, ...], generator: torch.Generator | None,
                      device: torch.device | str) -> torch.Tensor:
    """float64 Exp(1) noise, drawn where the generator lives (CPU by default), then moved."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.empty(shape, dtype=torch.float64, device=gen_device).exponential_(generator=generator).to(device)


def gumbel_noise(shape: torch.Size | tuple[int, ...], generator: torch.Generator | None,
                 device: torch.device | str) -> torch.Tensor:
    """float64 Gumbel noise −log E, E ~ Exp(1)."""
    return -exponential_noise(shape, generator, device).log()


def sample_categorical(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                       generator: torch.Generator | None = None,
                       gumbel: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one id per row of logits (..., V). Returns (ids, log-probability of each drawn id)
    under the filtered, temperature-scaled distribution. temperature 0 means greedy.
    `gumbel`: float64 noise of logits' shape, when the caller drew it (else from `generator`)."""
    logits = filter_logits(logits.double(), top_k, top_p)
    if temperature <= 0:
        ids = logits.argmax(dim=-1)
        return ids, torch.zeros(ids.shape, dtype=torch.float64, device=logits.device)
    log_probs = (logits / temperature).log_softmax(dim=-1)
    if gumbel is None:
        gumbel = gumbel_noise(log_probs.shape, generator, logits.device)
    ids = (log_probs + gumbel).argmax(dim=-1)
    return ids, log_probs.gather(-1, ids.unsqueeze(-1)).squeeze(-1)


def row_generators(seed: int, batch: int, device: torch.device | str = "cpu",
                   seeds: list[int] | None = None) -> list[torch.Generator]:
    """One generator per row, seeded seed + i (or seeds[i]): a row's draws do not depend on the rest
    of the batch."""
    seeds = seeds if seeds is not None else [seed + i for i in range(batch)]
    assert len(seeds) == batch, "one seed per row"
    return [torch.Generator(device=device).manual_seed(s) for s in seeds]


def row_uniforms(generators: list[torch.Generator], width: int, device: torch.device | str) -> torch.Tensor:
    """(B, width) float64 uniforms, row i from generators[i] (a row's draws do not depend on the batch)."""
    return torch.stack([torch.rand(width, dtype=torch.float64, generator=g, device=g.device).to(device)
                        for g in generators])


def apply_repetition_penalty(logits: torch.Tensor, tokens: torch.Tensor, visible: torch.Tensor,
                             penalty: float, special: SpecialIds) -> torch.Tensor:
    """CTRL-style penalty on tokens already visible in each row (special tokens excluded).

    logits: (B, W, V); tokens, visible: (B, T). A present token's positive logit is divided by
    `penalty` and its negative logit multiplied by it (so > 1 always makes it less likely).
    """
    B, _, V = logits.shape
    present = torch.zeros(B, V, dtype=torch.bool, device=logits.device)
    present.scatter_(1, torch.where(visible, tokens, special.mask), True)  # hidden positions mark [MASK]…
    present[:, [i for i in special.all if i < V]] = False  # …which, like every special, is never penalised
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(present[:, None, :], penalised, logits)


def position_scores(probs: torch.Tensor, drawn: torch.Tensor, order: str) -> torch.Tensor:
    """How sure the model is at each position, for ranking which to commit.

    probs: (..., V) the model's distribution; drawn: (...) the proposed ids. confidence = p(drawn),
    margin = top-1 − top-2 probability, entropy = −H(p) (higher = surer in every case).
    """
    if order == "confidence":
        return probs.gather(-1, drawn[..., None]).squeeze(-1)
    if order == "margin":
        top2 = probs.topk(2, dim=-1).values
        return top2[..., 0] - top2[..., 1]
    if order == "entropy":
        return (probs * probs.clamp_min(1e-30).log()).sum(-1)
    raise ValueError(f"no position score for order {order!r}")
