"""Left-to-right sampling for the causal twin, with a KV cache (one new token per forward)."""

from __future__ import annotations

import torch

from dlm.sampling.base import sample_categorical


@torch.no_grad()
def ar_generate(model: torch.nn.Module, prompt: torch.Tensor, length: int, bos_id: int,
                temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                generator: torch.Generator | None = None, suppress_ids: tuple[int, ...] = ()) -> torch.Tensor:
    """prompt: (B, P) ids. Returns (B, P + length): the prompt followed by `length` sampled ids.

    `suppress_ids` are never drawn (e.g. [MASK], [PAD] and [BOS]).
    """
    suppress = list(suppress_ids)
    B, P = prompt.shape
    device = prompt.device
    cache = model.new_cache(B, max_len=P + length)
    tokens = torch.cat((torch.full((B, 1), bos_id, dtype=prompt.dtype, device=device), prompt), dim=1)
    logits = model(tokens, cache=cache)[:, -1].float()
    out = [prompt]
    for i in range(length):
        logits[:, suppress] = float("-inf")
        next_id, _ = sample_categorical(logits, temperature, top_k, top_p, generator)
        next_id = next_id.to(prompt.dtype)[:, None]
        out.append(next_id)
        if i + 1 < length:
            logits = model(next_id, cache=cache)[:, -1].float()
    return torch.cat(out, dim=1)
