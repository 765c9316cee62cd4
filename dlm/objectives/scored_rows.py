"""The output head on the scored rows only.

A masked-diffusion loss multiplies every unmasked position's −log p by 0: about half the positions of an
MDLM window and 3/8 of a block-diffusion window's noisy copy. Over a BPE vocabulary the head and its loss
are a large share of a pass (per row, a head over 2,048 tokens costs about what one block of a 192-wide
model does), so dlm's Transformer computes logits for the scored rows alone (`rows`, flat indices into its
output). The numbers are the same; other models (Hugging Face backbones) get the full logits.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from dlm.model.transformer import Transformer
from dlm.model.wrappers import unwrapped
from dlm.objectives.cross_entropy import token_cross_entropy


def takes_rows(model: nn.Module) -> bool:
    """Whether the model (through torch.compile's and DDP's wrappers) accepts `rows=`: dlm's Transformer."""
    return isinstance(unwrapped(model), Transformer)


def flat_rows(selected: torch.Tensor) -> torch.Tensor:
    """(N,) flat indices of the True entries of `selected`, in row-major order (on a GPU, a wait for the device:
    N sizes the result; one per loss, small beside the head's products it saves)."""
    return selected.flatten().nonzero().squeeze(1)


def as_rows_argument(index: torch.Tensor) -> torch.Tensor | None:
    """`index` ready to pass as `rows=`, or None (compute every row) when it has fewer than 2 entries.

    Its length changes every step, so torch.compile is told so at once instead of compiling a graph for the
    first length and recompiling at the second; lengths 0 and 1 are ones it would specialise on."""
    if index.numel() < 2:
        return None
    torch._dynamo.maybe_mark_dynamic(index, 0)
    return index


def spread(values: torch.Tensor, index: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """A tensor of `shape`, `values` (N,) at the flat `index` (N,) and 0 elsewhere (differentiable)."""
    return values.new_zeros(shape.numel()).index_copy(0, index, values).view(shape)


def rows_nll(logits: torch.Tensor, target: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """−log p of `target` (any shape) at its flat `index` (N,), from those rows' `logits` (N, V); 0 elsewhere."""
    return spread(token_cross_entropy(logits, target.flatten()[index]), index, target.shape)
