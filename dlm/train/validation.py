"""The quick validation estimate the training log shows as val_loss (`dlm eval` gives the full figure)."""

from __future__ import annotations

import numpy as np
import torch

from dlm.data.loader import RandomWindows
from dlm.objectives import Objective
from dlm.runtime import autocast


@torch.no_grad()
def quick_val_loss(model: torch.nn.Module, objective: Objective, val_tokens: np.ndarray, block_size: int,
                   batch_size: int, n_batches: int, device: torch.device, dtype: torch.dtype) -> float:
    """Loss per token over `n_batches` fixed-seed random windows of the validation split, with
    fixed-seed noise: the same windows and masks at every evaluation, so the curve is comparable."""
    was_training = model.training
    model.eval()
    windows = RandomWindows(val_tokens, block_size, seed=0, device=device)
    noise = torch.Generator().manual_seed(0)
    total, count = 0.0, 0
    for _ in range(n_batches):
        with autocast(device, dtype):
            out = objective(model, windows.next_batch(batch_size), noise)
        total += out.nll_sum.item()
        count += out.n_tokens
    model.train(was_training)
    return total / count
