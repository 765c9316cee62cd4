"""Characters behind windows of token ids: the unit that compares runs with different tokenizers.

A run's NLL is summed over tokens; divided by the characters those tokens spell, it is nats/char
whatever the tokenizer, so a BPE run and a character run are scored on the same text. For a BPE
model the figure is still an upper bound on the text's NLL: the tokenizer's own spelling of the
text is one of the token sequences the model could write it with, so its probability is at most
the text's. A reserved token ([EOS] between documents) counts as one character, as the character
tokenizer counts it, so that a character run's nats/char equals its nats/token exactly.
"""

from __future__ import annotations

import math

import torch

from dlm.tokenizers.base import Tokenizer


def window_characters(windows: torch.Tensor, tokenizer: Tokenizer, start: int = 0) -> int:
    """Characters spelt by `windows` (N, L), from position `start` of each row on."""
    reserved = set(tokenizer.special.all)
    total = 0
    for row in windows[:, start:].tolist():
        run: list[int] = []
        for token in row + [None]:  # None flushes the last run
            if token is None or token in reserved:
                total += len(tokenizer.decode(run)) if run else 0
                total += token is not None
                run = []
            else:
                run.append(token)
    return total


def written_characters(tokenizer: Tokenizer, tokens: torch.Tensor, generated: torch.Tensor) -> int:
    """Characters the `generated` positions of `tokens` (N, T) spell, reserved tokens left out (an [EOS]
    ends a sample, it writes nothing): the unit of a sampler's speed, the same for any tokenizer."""
    reserved = set(tokenizer.reserved_ids)
    rows = zip(tokens.tolist(), generated.tolist(), strict=True)
    return sum(len(tokenizer.decode([t for t, g in zip(ids, mask, strict=True) if g and t not in reserved]))
               for ids, mask in rows)


def add_per_char(result: dict, characters: int) -> dict:
    """Adds `characters`, `nats_per_char` and `bits_per_char` to a likelihood result that states
    `nats_per_token` over `tokens` (or `tokens_scored`) positions, and its standard errors rescaled the
    same way (`…_standard_error_per_char`: the window one treats every window as spelling the mean
    number of characters); returns it."""
    scale = result.get("tokens_scored", result.get("tokens")) / characters
    nats = result["nats_per_token"] * scale
    result.update({"characters": characters, "nats_per_char": nats, "bits_per_char": nats / math.log(2)})
    for key in ("mc_standard_error", "window_standard_error"):
        if result.get(key) is not None:
            result[f"{key}_per_char"] = result[key] * scale
    return result
