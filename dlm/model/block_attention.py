"""Attention over block diffusion's training input, [noisy z | clean x], without the dense 2L × 2L mask.

The mask (`block_diffusion_mask`, the dense reference) has three non-empty parts: clean → clean (block-causal,
L × L), noisy → clean (earlier blocks only, L × L) and noisy → noisy (each block with itself: L/B
blocks of B × B). Computing only those parts takes about half the work and memory of a dense
(2L)² attention with three quarters of it masked, and the result is the same softmax: a noisy query's
weights are normalised over its clean and its own-block keys together.

Both L × L parts are lower-triangular by blocks, so their queries are also split in `row_bands` bands:
the band of rows [iL/T, (i+1)L/T) can only see clean keys before (i+1)L/T, and skips the rest. With
T = 2 the two parts cost 3/4 of their square (bench/attention.py --block-diffusion).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


def check_block_size(length: int, block: int) -> None:
    if block < 1 or length % block:
        raise ValueError(f"diffusion.block_size={block} must divide the sequence length {length} "
                         f"(e.g. {', '.join(str(d) for d in (1, 2, 4, 8, 16) if length % d == 0)})")


def clean_visible(length: int, block: int, clean_causal: bool, device: torch.device | str) -> torch.Tensor:
    """(L, L) bool: which clean keys a clean query sees — its block and the blocks before it, or with
    `clean_causal` only the tokens up to itself."""
    pos = torch.arange(length, device=device)
    if clean_causal:
        return pos[None, :] <= pos[:, None]
    return (pos // block)[None, :] <= (pos // block)[:, None]


def block_diffusion_mask(length: int, block: int, device: torch.device | str = "cpu", copies: int = 1,
                         clean_causal: bool = False) -> torch.Tensor:
    """((k+1)L, (k+1)L) bool, True where a query may attend: rows and columns are [noisy z_1 … z_k | clean x],
    k = `copies` noisy copies of the window that share its one clean copy. `clean_causal`: a clean token
    sees the clean tokens up to itself (token-causal) instead of its whole block."""
    check_block_size(length, block)
    ids = torch.arange(length, device=device) // block  # block of each position
    q, k = ids[:, None], ids[None, :]
    never = torch.zeros_like(q == k)
    rows = []
    for c in range(copies):  # noisy b of copy c: its own noisy block of copy c, clean blocks < b
        rows.append(torch.cat([q == k if j == c else never for j in range(copies)] + [k < q], dim=1))
    rows.append(torch.cat([never] * copies + [clean_visible(length, block, clean_causal, device)], dim=1))
    return torch.cat(rows, dim=0)


@dataclass
class BlockDiffusionLayout:
    """Passed as the model's `attn_mask` for a [noisy z_1 … z_k | clean x] input of (k + 1) × `length`
    tokens, k = `copies` (each noisy copy its own draw of the noise, all reading the one clean copy)."""
    length: int
    block: int
    copies: int = 1
    clean_causal: bool = False
    """Clean tokens attend token-causally; it must match the model's `clean_causal` (Transformer.forward checks)."""
    clean_rows: bool = False
    """Return the clean copy's rows too (its next-token logits: diffusion.clean_ar_weight)."""
    _biases: dict = field(default_factory=dict, repr=False)

    def biases(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(clean → clean, noisy → clean) additive biases, (L, L): 0 where allowed, −inf elsewhere.

        Kept per device and dtype in eager code. Compiled code builds them in its graph instead (a few
        element-wise ops on L × L): filling the cache there made torch.compile guard on it and compile the
        whole model a second time at the next call, ~15 s of a 10-minute CPU run."""
        key = (str(device), dtype)
        if torch.compiler.is_compiling():
            return self._build_biases(device, dtype)
        if key not in self._biases:
            self._biases[key] = self._build_biases(device, dtype)
        return self._biases[key]

    def _build_biases(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.arange(self.length, device=device) // self.block
        q, k = ids[:, None], ids[None, :]
        blocked = torch.tensor(float("-inf"), device=device, dtype=dtype)
        zero = torch.tensor(0.0, device=device, dtype=dtype)
        clean = clean_visible(self.length, self.block, self.clean_causal, device)
        return torch.where(clean, zero, blocked), torch.where(k < q, zero, blocked)


@functools.lru_cache(maxsize=64)
def block_layout(length: int, block: int, copies: int = 1, clean_causal: bool = False,
                 clean_rows: bool = False) -> BlockDiffusionLayout:
    """One layout (and its cached biases) per shape."""
    check_block_size(length, block)
    return BlockDiffusionLayout(length, block, copies, clean_causal, clean_rows)


def row_bands(length: int, block: int, copies: int) -> int:
    """How many bands of query rows the two L × L parts are split into: 2 where each band is whole blocks
    and long enough for its matmuls to stay efficient, else 1. One noisy copy only (copies share rows)."""
    half = length // 2
    return 2 if copies == 1 and length % 2 == 0 and half % block == 0 and half >= 64 else 1


def block_diffusion_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: BlockDiffusionLayout,
                              dropout: float = 0.0, bands: int | None = None) -> torch.Tensor:
    """q: (B, H, (k+1)L, Hd), rows [noisy z_1 … z_k | clean x], or (B, H, kL, Hd), the noisy rows alone
    (the last layer, whose clean outputs nothing reads); k, v: (B, H, (k+1)L, Hd). Returns one row per query.
    `bands`: how many bands of query rows (default: what `row_bands` picks; more than one needs bands of whole
    blocks and one noisy copy)."""
    L, C = layout.length, layout.copies
    qn, qc = q[:, :, :C * L], q[:, :, C * L:]  # the C noisy copies stacked along the rows: 4-D matmuls only
    kn, kc = k[:, :, :C * L], k[:, :, C * L:]
    vn, vc = v[:, :, :C * L], v[:, :, C * L:]
    clean_bias, past_bias = layout.biases(q.device, q.dtype)
    if C > 1:
        past_bias = past_bias.repeat(C, 1)  # (CL, L): every copy's rows see the same clean blocks
    bands = bands or row_bands(L, layout.block, C)
    band = L // bands
    if bands > 1 and (C > 1 or band * bands != L or band % layout.block):
        raise ValueError(f"{bands} bands of rows need one noisy copy and bands of whole blocks of {layout.block}")
    noisy, clean = [], []
    for i in range(bands):  # rows of band i see clean keys before `seen` only
        rows = slice(i * band, (i + 1) * band) if bands > 1 else slice(None)  # one band: every copy's rows
        seen = (i + 1) * band
        kc_seen, vc_seen = kc[:, :, :seen], vc[:, :, :seen]
        noisy.append(_noisy_rows(qn[:, :, rows], kn[:, :, rows], vn[:, :, rows], kc_seen, vc_seen,
                                 past_bias[rows, :seen], layout.block, dropout))
        if qc.shape[2]:
            clean.append(_clean_rows(qc[:, :, rows], kc_seen, vc_seen, clean_bias[rows, :seen], dropout))
    return torch.cat(noisy + clean, dim=2) if len(noisy) + len(clean) > 1 else noisy[0]


def _noisy_rows(qn: torch.Tensor, kn: torch.Tensor, vn: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor,
                past_bias: torch.Tensor, block: int, dropout: float) -> torch.Tensor:
    """Noisy rows → [clean blocks before their own | their own noisy block], one softmax over both."""
    B, H, R, Hd = qn.shape
    n, scale, seen = R // block, Hd ** -0.5, kc.shape[2]
    to_past = (qn @ kc.transpose(-1, -2)) * scale + past_bias  # (B, H, R, seen)
    qb, kb, vb = (t.reshape(B, H, n, block, Hd) for t in (qn, kn, vn))
    to_own = ((qb @ kb.transpose(-1, -2)) * scale).reshape(B, H, R, block)  # (B, H, R, block)
    weights = torch.cat((to_past, to_own), dim=-1).softmax(-1)
    if dropout:
        weights = F.dropout(weights, dropout)
    own = weights[..., seen:].reshape(B, H, n, block, block) @ vb  # (B, H, n, block, Hd)
    return weights[..., :seen] @ vc + own.reshape(B, H, R, Hd)


def _clean_rows(qc: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, clean_bias: torch.Tensor,
                dropout: float) -> torch.Tensor:
    """Clean rows → the clean keys they may see (block-causal or token-causal, by the bias)."""
    weights = ((qc @ kc.transpose(-1, -2)) * qc.shape[-1] ** -0.5 + clean_bias).softmax(-1)
    return (F.dropout(weights, dropout) if dropout else weights) @ vc
