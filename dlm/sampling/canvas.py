"""The canvas a diffusion sampler works on: token ids, which of them are fixed, and padding.

A row is a list of ids with `None` where a [MASK] goes: a prompt followed by masks, or an
infilling template with fixed text anywhere. Rows of different lengths are left-padded to one
width; each row gets RoPE positions counted from its own first real token and padding is hidden
from attention, so a row's sample is the same alone or in a mixed batch. Left padding also lines
up the generated regions of prompts of different lengths, so semi-autoregressive blocks (and
their KV caches) cover the same columns in every row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dlm.special_ids import SpecialIds


@dataclass
class Canvas:
    tokens: torch.Tensor
    """(B, T) ids; [MASK] where text is still to be generated."""
    fixed: torch.Tensor
    """(B, T) bool: prompt or template text and padding, never changed."""
    valid: torch.Tensor
    """(B, T) bool: False at left padding."""
    positions: torch.Tensor
    """(B, T) RoPE position of each column (0 at a row's first real token)."""

    @property
    def padded(self) -> bool:
        return not bool(self.valid.all())

    @property
    def gen_start(self) -> int:
        """First column holding a [MASK] in any row (where semi-autoregressive blocks begin)."""
        editable = ~self.fixed
        if not editable.any():
            return self.tokens.shape[1]
        return int(editable.any(0).nonzero()[0])

    def to(self, device: torch.device | str) -> Canvas:
        return Canvas(self.tokens.to(device), self.fixed.to(device), self.valid.to(device),
                      self.positions.to(device))


def build_canvas(rows: list[list[int | None]], special: SpecialIds, device: torch.device | str = "cpu",
                 editable: list[list[bool]] | None = None) -> Canvas:
    """Rows of ids (None = [MASK]) → a left-padded canvas. `editable` marks given ids that a sampler
    may change (editing a text); by default every given id is fixed."""
    if not rows:
        raise ValueError("no rows to sample")
    width = max(len(r) for r in rows)
    B = len(rows)
    tokens = torch.full((B, width), special.pad, dtype=torch.long)
    fixed = torch.ones(B, width, dtype=torch.bool)
    valid = torch.zeros(B, width, dtype=torch.bool)
    for b, row in enumerate(rows):
        offset = width - len(row)
        valid[b, offset:] = True
        for i, token in enumerate(row):
            tokens[b, offset + i] = special.mask if token is None else token
            fixed[b, offset + i] = token is not None and not (editable is not None and editable[b][i])
    positions = (valid.long().cumsum(1) - 1).clamp(min=0)
    return Canvas(tokens.to(device), fixed.to(device), valid.to(device), positions.to(device))


def prompt_canvas(prompts: list[list[int]], length: int, special: SpecialIds,
                  device: torch.device | str = "cpu") -> Canvas:
    """Each prompt followed by `length` masks."""
    return build_canvas([list(p) + [None] * length for p in prompts], special, device)


def attention_mask(canvas: Canvas, block_length: int = 0, block_causal: bool = False,
                   query: tuple[int, int] | None = None, keys: int | None = None,
                   aligned: bool = False, causal_before: int | None = None) -> torch.Tensor | None:
    """Bool (B, 1, Tq, Tk) mask (True = may attend), or None when every key is visible.

    Hides padding keys (a padding query sees itself, so its row of the softmax stays finite). With
    `block_causal`, a query sees only keys in its own block or earlier blocks, the text before the
    first block counting as block −1 (BD3-LM); with `aligned`, blocks are cut at multiples of
    `block_length` in each row's own positions, prompt included (how a bd3 model was trained).
    `query` = (start, end) columns of the queries and `keys` the number of key columns (defaults: all).
    `causal_before` (block-causal only): queries in columns before it, the finished blocks, see only the
    keys up to their own column (a block model with model.clean_causal reads its finished blocks so).
    """
    T = canvas.tokens.shape[1]
    q0, q1 = query or (0, T)
    keys = T if keys is None else keys
    if not canvas.padded and not block_causal:
        return None
    device = canvas.tokens.device
    q_cols = torch.arange(q0, q1, device=device)
    k_cols = torch.arange(keys, device=device)
    allowed = canvas.valid[:, None, None, :keys] | (q_cols[:, None] == k_cols[None, :])[None, None]
    if block_causal:
        start = canvas.gen_start

        def block_of(cols: torch.Tensor) -> torch.Tensor:
            return torch.where(cols < start, -1, torch.div(cols - start, block_length, rounding_mode="floor"))

        if aligned:  # per row: (B, 1, Tq, Tk)
            blocks = torch.div(canvas.positions, block_length, rounding_mode="floor")  # (B, T)
            allowed = allowed & (blocks[:, None, None, :keys] <= blocks[:, None, q0:q1, None])
        else:
            allowed = allowed & (block_of(k_cols)[None, :] <= block_of(q_cols)[:, None])[None, None]
        if causal_before is not None:
            finished = (q_cols < causal_before)[:, None]
            allowed = allowed & ~(finished & (k_cols[None, :] > q_cols[:, None]))[None, None]
    return allowed
