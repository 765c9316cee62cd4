"""The autoregressive twin's objective: the exact next-token NLL, each sequence read from a [BOS]."""

from __future__ import annotations

import torch
import torch.nn as nn

from dlm.objectives.cross_entropy import token_cross_entropy
from dlm.objectives.output import LossOutput


def ar_loss(model: nn.Module, x: torch.Tensor, bos_id: int, token_weight: torch.Tensor | None = None,
            input_mask: float = 0.0, mask_id: int | None = None,
            generator: torch.Generator | None = None) -> LossOutput:
    """Exact NLL of x (B, L) under the causal twin, predicting every token after a [BOS].

    `token_weight` (B, L) weighs each position (chat fine-tuning: 0 on the prompt, 1 on the reply),
    the same loss mask the diffusion objective gets. `input_mask` > 0 (training only): that share of
    the inputs after [BOS] is replaced by `mask_id`, a regulariser; the targets stay the text."""
    B, L = x.shape
    inputs = torch.cat((torch.full_like(x[:, :1], bos_id), x[:, :-1]), dim=1)
    if input_mask > 0 and model.training:
        # drawn on the CPU from the caller's generator, as the diffusion noise is (dlm.diffusion.process)
        hide = (torch.rand(inputs.shape, generator=generator, device="cpu") < input_mask).to(x.device)
        hide[:, 0] = False  # the [BOS]
        inputs = inputs.masked_fill(hide, mask_id)
    logits = model(inputs).float()
    nll = token_cross_entropy(logits, x)  # (B, L)
    if token_weight is not None:
        nll = nll * token_weight
    per_seq = nll.mean(1)
    return LossOutput(nll.sum(), B * L, per_seq.detach(), torch.zeros(B, device=x.device))
