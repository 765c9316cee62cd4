"""The two training objectives behind one call: (model, batch of ids, noise generator) → LossOutput.

`mdlm` — the masked-diffusion NELBO (dlm.objectives.mdlm); `bd3` — block diffusion's NELBO
(dlm.objectives.block_diffusion); `ar` — the causal twin's exact next-token NLL
(dlm.objectives.autoregressive). Both return sums and counts (dlm.objectives.output).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dlm.diffusion.schedules import get_schedule
from dlm.objectives.autoregressive import ar_loss
from dlm.objectives.block_diffusion import bd3_loss
from dlm.objectives.mdlm import mdlm_loss
from dlm.objectives.output import LossOutput
from dlm.tokenizers import Tokenizer

Objective = Callable[..., LossOutput]
"""objective(model, x (B, L) ids, noise generator, mask_scale=None, prompt_mask=None, token_weight=None)
→ LossOutput; the keyword tensors are (B, L) batch extras (entropy masking, chat fine-tuning)."""

__all__ = ["LossOutput", "Objective", "ar_loss", "bd3_loss", "make_objective", "mdlm_loss"]


def make_objective(objective: str, schedule: str, tokenizer: Tokenizer, *, edit_prob: float = 0.0,
                   edit_weight: float = 1.0, prompt_prob: float = 0.0, antithetic: bool = True,
                   weighting: str = "elbo", weight_cap: float | None = None, ar_input_mask: float = 0.0,
                   block_size: int = 0, t_range: tuple[float, float] = (0.0, 1.0),
                   noisy_copies: int = 1, clean_ar_weight: float = 0.0, block_noise: str = "t") -> Objective:
    """The training loss: objective(model, x, generator, mask_scale=None). `edit_prob`, `edit_weight`,
    `prompt_prob`, `antithetic` and `weighting` are the diffusion config's training-time options
    (see dlm.objectives.mdlm and dlm.diffusion.process); `mask_scale` (B, L), entropy-weighted
    masking's per-token factors. The AR objective has none of them; `ar_input_mask` is its own
    (dlm.objectives.autoregressive), and bd3's for its clean copy (`clean_input_mask`). `block_size`,
    `t_range`, `noisy_copies`, `clean_ar_weight` and `block_noise` are block diffusion's (bd3)."""
    if objective == "ar":
        return lambda model, x, gen, mask_scale=None, prompt_mask=None, token_weight=None: ar_loss(
            model, x, tokenizer.bos_id, token_weight=token_weight, input_mask=ar_input_mask,
            mask_id=tokenizer.mask_id, generator=gen)
    sched = get_schedule(schedule)
    if objective == "bd3":
        return lambda model, x, gen, mask_scale=None, prompt_mask=None, token_weight=None: bd3_loss(
            model, x, sched, tokenizer.mask_id, block_size, tokenizer.n_real_tokens, generator=gen,
            antithetic=antithetic, weighting=weighting, weight_cap=weight_cap, t_range=t_range,
            prompt_mask=prompt_mask, token_weight=token_weight, copies=noisy_copies,
            clean_ar_weight=clean_ar_weight, clean_input_mask=ar_input_mask, count_masking=block_noise == "count")
    special = set(tokenizer.reserved_ids)
    # Where the specials sit depends on the tokenizer (last for char, first for BPE; added ones last).
    real_ids = torch.tensor([i for i in range(tokenizer.vocab_size) if i not in special])  # (V_real,)
    assert len(real_ids) == tokenizer.n_real_tokens
    return lambda model, x, gen, mask_scale=None, prompt_mask=None, token_weight=None: mdlm_loss(
        model, x, sched, tokenizer.mask_id, tokenizer.n_real_tokens, generator=gen, edit_prob=edit_prob,
        edit_weight=edit_weight, prompt_prob=prompt_prob, real_ids=real_ids, antithetic=antithetic,
        weighting=weighting, weight_cap=weight_cap, mask_scale=mask_scale, prompt_mask=prompt_mask,
        token_weight=token_weight)
