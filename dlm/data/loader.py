"""Training batches: random windows of the token stream, reproducible and resumable.

The window starts come from a torch.Generator whose state is part of the checkpoint, so a
resumed run draws exactly the batches the uninterrupted run would have drawn.
"""

from __future__ import annotations

import numpy as np
import torch

from dlm.errors import DlmError


class RandomWindows:
    """(B, T) int64 batches of random length-T windows from a 1-D token array."""

    def __init__(self, tokens: np.ndarray, block_size: int, seed: int, device: torch.device | str = "cpu",
                 aux: np.ndarray | None = None):
        if len(tokens) < block_size + 1:
            raise DlmError(f"the training split has {len(tokens)} tokens, fewer than block_size={block_size}; "
                           "use more text or a smaller model.block_size")
        assert aux is None or len(aux) == len(tokens), "aux holds one value per token"
        self.tokens, self.block_size, self.device, self.aux = tokens, block_size, torch.device(device), aux
        self.generator = torch.Generator().manual_seed(seed)
        self._offsets = torch.arange(block_size)
        self.last_aux: torch.Tensor | None = None
        """(B, T) float32: the `aux` values of the windows of the last batch (per-token masking scales)."""

    def next_batch(self, batch_size: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
        """The next global batch of `batch_size` windows; with several ranks, this rank's slice.

        Every rank draws the same global starts and reads only its own rows, so the data stream
        is the same for any number of ranks (exact resume after changing it).
        """
        starts = torch.randint(0, len(self.tokens) - self.block_size + 1, (batch_size,),
                               generator=self.generator)
        per_rank = batch_size // world_size
        starts = starts[rank * per_rank:(rank + 1) * per_rank]
        index = (starts[:, None] + self._offsets).numpy()
        batch = self._to_device(torch.from_numpy(self.tokens[index].astype(np.int64)))
        if self.aux is not None:
            self.last_aux = self._to_device(torch.from_numpy(self.aux[index].astype(np.float32)))
        return batch

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def eval_windows(tokens: np.ndarray, block_size: int) -> torch.Tensor:
    """Consecutive non-overlapping windows covering the split (a tail shorter than T is dropped)."""
    n = len(tokens) // block_size
    if n == 0:
        raise DlmError(f"the split has {len(tokens)} tokens, fewer than block_size={block_size}")
    return torch.from_numpy(np.asarray(tokens[: n * block_size], dtype=np.int64).reshape(n, block_size))
