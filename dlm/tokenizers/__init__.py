"""Tokenizers: character-level and byte-level BPE, both saved to and loaded from one JSON file."""

from dlm.tokenizers.base import SPECIAL_TOKENS, Tokenizer, load_tokenizer
from dlm.tokenizers.bpe import BPETokenizer
from dlm.tokenizers.char import CharTokenizer

__all__ = ["SPECIAL_TOKENS", "Tokenizer", "CharTokenizer", "BPETokenizer", "load_tokenizer"]
