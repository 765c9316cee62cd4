"""The quick validation estimate the training log shows as val_loss (`dlm eval` gives the full figure)."""

from __future__ import annotations

import torch

from dlm.objectives import Objective
from dlm.runtime import autocast


@torch.no_grad()
def quick_val_loss(model: torch.nn.Module, objective: Objective, batches, batch_size: int, n_batches: int,
                   device: torch.device, dtype: torch.dtype) -> float:
    """Loss per token over `n_batches` of a fixed-seed loader of the validation split (windows or
    chat canvases), with fixed-seed noise: the same batches and masks at every evaluation, so the
    curve is comparable."""
    was_training = model.training
    model.eval()
    noise = torch.Generator().manual_seed(0)
    total, count = 0.0, 0
    for _ in range(n_batches):
        x = batches.next_batch(batch_size)
        with autocast(device, dtype):
            out = objective(model, x, noise, **getattr(batches, "last_extras", {}))
        total += out.nll_sum.item()
        count += out.n_tokens
    model.train(was_training)
    return total / count
