"""Key/value caches: one pre-allocated buffer per layer, written and read by position.

Two ways to use it:

* **Appending** (the autoregressive twin): each forward writes its tokens at `length` and
  attends to everything written so far; `length` then advances.
* **Windows** (block diffusion samplers): the caller sets `window = (start, end)` before a
  forward; its tokens are written at `start` (overwriting what was there) and attend to the keys
  in `[0, end)`, which may reach past the tokens themselves (the dual cache reads a cached
  suffix). `length` does not move; the sampler decides what stays valid.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, n_layer: int, batch: int, n_head: int, max_len: int, head_dim: int,
                 device: torch.device, dtype: torch.dtype):
        shape = (n_layer, batch, n_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0
        """Positions filled by appending forwards."""
        self.window: tuple[int, int] | None = None
        """(start, end): the next forward writes at `start` and attends to keys [0, end)."""

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def span(self, n_tokens: int) -> tuple[int, int]:
        """Where a forward of `n_tokens` writes (start) and how far it reads (end)."""
        if self.window is not None:
            return self.window
        return self.length, self.length + n_tokens

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, H, T, Hd) and return the keys and values to attend to (B, H, end, Hd)."""
        start, end = self.span(k.shape[2])
        self.k[layer, :, :, start:start + k.shape[2]] = k
        self.v[layer, :, :, start:start + k.shape[2]] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, n_tokens: int) -> None:
        if self.window is None:
            self.length += n_tokens
