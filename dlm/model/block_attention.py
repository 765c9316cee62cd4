"""Attention over block diffusion's training input, [noisy z | clean x], without the dense 2L × 2L mask.

The mask (`block_diffusion_mask`, the dense reference) has three non-empty parts: clean → clean (block-causal,
L × L), noisy → clean (earlier blocks only, L × L) and noisy → noisy (each block with itself: L/B
blocks of B × B). Computing only those parts takes about half the work and memory of a dense
(2L)² attention with three quarters of it masked (bench/block_diffusion_attention.py), and the
result is the same softmax: a noisy query's weights are normalised over its clean and its own-block
keys together.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


def check_block_size(length: int, block: int) -> None:
    if block < 1 or length % block:
        raise ValueError(f"diffusion.block_size={block} must divide the sequence length {length} "
                         f"(e.g. {', '.join(str(d) for d in (1, 2, 4, 8, 16) if length % d == 0)})")


def block_diffusion_mask(length: int, block: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(2L, 2L) bool, True where a query may attend: rows and columns are [noisy z | clean x]."""
    check_block_size(length, block)
    ids = torch.arange(length, device=device) // block  # block of each position
    q, k = ids[:, None], ids[None, :]
    noisy_rows = torch.cat((q == k, k < q), dim=1)  # noisy b: its own noisy block, clean blocks < b
    clean_rows = torch.cat((torch.zeros_like(q == k), k <= q), dim=1)  # clean b: clean blocks ≤ b
    return torch.cat((noisy_rows, clean_rows), dim=0)


@dataclass
class BlockDiffusionLayout:
    """Passed as the model's `attn_mask` for a [noisy | clean] input of 2 × `length` tokens."""
    length: int
    block: int
    _biases: dict = field(default_factory=dict, repr=False)

    def biases(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(clean → clean, noisy → clean) additive biases, (L, L): 0 where allowed, −inf elsewhere."""
        key = (str(device), dtype)
        if key not in self._biases:
            ids = torch.arange(self.length, device=device) // self.block
            q, k = ids[:, None], ids[None, :]
            blocked = torch.tensor(float("-inf"), device=device, dtype=dtype)
            zero = torch.tensor(0.0, device=device, dtype=dtype)
            self._biases[key] = (torch.where(k <= q, zero, blocked), torch.where(k < q, zero, blocked))
        return self._biases[key]


def block_diffusion_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: BlockDiffusionLayout,
                              dropout: float = 0.0) -> torch.Tensor:
    """q: (B, H, 2L, Hd), rows [noisy | clean], or (B, H, L, Hd), the noisy rows alone (the last
    layer, whose clean outputs nothing reads); k, v: (B, H, 2L, Hd). Returns one row per query."""
    B, H, _, Hd = q.shape
    L, Bk = layout.length, layout.block
    n = L // Bk
    scale = Hd ** -0.5
    qn, qc = q[:, :, :L], q[:, :, L:]
    kn, kc = k[:, :, :L], k[:, :, L:]
    vn, vc = v[:, :, :L], v[:, :, L:]
    clean_bias, past_bias = layout.biases(q.device, q.dtype)

    # noisy → [clean blocks before its own | its own noisy block], one softmax over both
    to_past = (qn @ kc.transpose(-1, -2)) * scale + past_bias  # (B, H, L, L)
    qb, kb, vb = (t.reshape(B, H, n, Bk, Hd) for t in (qn, kn, vn))
    to_own = ((qb @ kb.transpose(-1, -2)) * scale).reshape(B, H, L, Bk)  # (B, H, L, Bk)
    weights = torch.cat((to_past, to_own), dim=-1).softmax(-1)
    if dropout:
        weights = F.dropout(weights, dropout)
    own = weights[..., L:].reshape(B, H, n, Bk, Bk) @ vb  # (B, H, n, Bk, Hd)
    noisy_out = weights[..., :L] @ vc + own.reshape(B, H, L, Hd)
    if qc.shape[2] == 0:
        return noisy_out

    # clean → clean, block-causal
    weights = ((qc @ kc.transpose(-1, -2)) * scale + clean_bias).softmax(-1)
    clean_out = (F.dropout(weights, dropout) if dropout else weights) @ vc
    return torch.cat((noisy_out, clean_out), dim=2)
