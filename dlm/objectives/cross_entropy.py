"""−log p(target) at every position of a (B, T, V) logits tensor.

`F.cross_entropy(logits.transpose(1, 2), target)`, the usual spelling, hands the CPU kernels a strided
(B, V, T) view; read as B·T rows of V instead, the same numbers come 1.55× faster with a BPE run's 2,048
tokens (head and loss, forward and backward), so its training pass is 8–9 % faster under block diffusion
and 11–18 % under the AR objective; with characters nothing changes (bench/cross_entropy.py, AMD EPYC,
AVX512-BF16 class, bf16 and fp32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, T) −log softmax(logits)[target] of logits (B, T, V) and target (B, T), unreduced."""
    V = logits.shape[-1]
    return F.cross_entropy(logits.reshape(-1, V), target.reshape(-1), reduction="none").view(target.shape)
