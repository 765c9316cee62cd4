"""The two training objectives behind one call: batch of token ids → LossOutput (sums and counts)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from dlm.diffusion.loss import LossOutput, ar_loss, mdlm_loss
from dlm.diffusion.schedules import get_schedule
from dlm.tokenizers import Tokenizer

Objective = Callable[[torch.nn.Module, torch.Tensor, torch.Generator | None], LossOutput]


def make_objective(objective: str, schedule: str, tokenizer: Tokenizer, *, edit_prob: float = 0.0,
                   edit_weight: float = 1.0, prompt_prob: float = 0.0, antithetic: bool = True) -> Objective:
    """The training loss. `edit_prob`, `edit_weight`, `prompt_prob` and `antithetic` are the diffusion
    config's training-time options (see dlm.diffusion.loss and .process); the AR objective has none."""
    if objective == "ar":
        return lambda model, x, gen: ar_loss(model, x, tokenizer.bos_id)
    sched = get_schedule(schedule)
    special = set(tokenizer.special_ids)
    # Where the specials sit depends on the tokenizer (last for char, first for BPE).
    real_ids = torch.tensor([i for i in range(tokenizer.vocab_size) if i not in special])  # (V_real,)
    assert len(real_ids) == tokenizer.n_real_tokens
    return lambda model, x, gen: mdlm_loss(model, x, sched, tokenizer.mask_id, tokenizer.n_real_tokens,
                                           generator=gen, edit_prob=edit_prob, edit_weight=edit_weight,
                                           prompt_prob=prompt_prob, real_ids=real_ids, antithetic=antithetic)
