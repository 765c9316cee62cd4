"""Growing a trained model's vocabulary: new token ids (chat roles, end of turn) get new rows; every
existing row, and so every logit of an existing token, stays exactly as it was."""

from __future__ import annotations

import torch

TOKEN_ROWS = ("embed.weight", "head.weight")


def grow_vocabulary(state: dict[str, torch.Tensor], vocab_size: int) -> dict[str, torch.Tensor]:
    """A copy of a Transformer state dict with `vocab_size` rows in the embedding and output head.

    New embedding rows start at the mean of the old ones (a neutral input); new head rows also at
    the mean of the old ones, so a new token's logit starts at the average logit, neither certain
    nor impossible, and fine-tuning moves it from there."""
    out = dict(state)
    for name in TOKEN_ROWS:
        if name not in state:
            continue
        old = state[name]  # (V_old, D)
        if old.shape[0] > vocab_size:
            raise ValueError(f"{name} has {old.shape[0]} rows, more than the new vocabulary's {vocab_size}")
        extra = old.float().mean(0, keepdim=True).to(old.dtype).expand(vocab_size - old.shape[0], -1)
        out[name] = torch.cat((old, extra)).contiguous()
    return out
