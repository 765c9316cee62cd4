"""The two training objectives behind one call: batch of token ids → LossOutput (sums and counts)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from dlm.diffusion.loss import LossOutput, ar_loss, mdlm_loss
from dlm.diffusion.schedules import get_schedule
from dlm.tokenizers import Tokenizer

Objective = Callable[[torch.nn.Module, torch.Tensor, torch.Generator | None], LossOutput]


def make_objective(objective: str, schedule: str, tokenizer: Tokenizer) -> Objective:
    if objective == "ar":
        return lambda model, x, gen: ar_loss(model, x, tokenizer.bos_id)
    sched = get_schedule(schedule)
    return lambda model, x, gen: mdlm_loss(model, x, sched, tokenizer.mask_id,
                                           tokenizer.n_real_tokens, generator=gen)
