"""Which text to train on and how to tokenize it: a plain dataclass, importable without torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DataConfig:
    source: str = "tinyshakespeare"
    """Corpus: 'tinyshakespeare' (downloaded once, cached), a file, a folder, a glob, or hf:NAME[:CONFIG]."""
    tokenizer: str = "char"
    """'char' (one id per character) or 'bpe' (byte-level BPE learnt from the corpus before its validation tail)."""
    vocab_size: int = 8192
    """BPE vocabulary size, special tokens included (ignored for 'char')."""
    val_fraction: float = 0.1
    """The last this-fraction of the token stream is the validation split."""
