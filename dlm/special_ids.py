"""The reserved token ids every layer agrees on: [MASK], [PAD], [BOS], [EOS].

Tokenizers produce them (`Tokenizer.special`); samplers, objectives and evaluation take them as
this one value instead of four loose integers, and never see a tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SpecialIds:
    mask: int
    """The absorbing state: a position still to be generated."""
    pad: int
    """Filler: left padding of batched prompts, and what follows an [EOS] that ended a row."""
    bos: int
    """Start of sequence: what the autoregressive twin reads before the first token."""
    eos: int
    """End of a document: separates documents in the token stream."""

    @property
    def all(self) -> tuple[int, int, int, int]:
        return (self.mask, self.pad, self.bos, self.eos)
