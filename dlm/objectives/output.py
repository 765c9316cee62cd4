"""What every objective returns: sums and counts, so accumulation divides once, exactly."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LossOutput:
    nll_sum: torch.Tensor
    """Sum over the batch of per-sequence losses (NELBO or exact NLL) times L, in nats (0-dim, float32)."""
    n_tokens: int
    """Number of tokens the sum covers (B·L)."""
    per_sequence: torch.Tensor
    """(B,) loss per token of each sequence (detached), for variance estimates."""
    t: torch.Tensor
    """(B,) the noise levels used (zeros for the autoregressive objective)."""
