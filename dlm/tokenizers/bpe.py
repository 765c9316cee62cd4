"""Byte-level BPE trained with Hugging Face `tokenizers`: any text encodes, decoding is exact."""

from __future__ import annotations

import json
from collections.abc import Iterable

import numpy as np
from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from dlm.errors import DlmError
from dlm.tokenizers.base import SPECIAL_TOKENS, Tokenizer


class BPETokenizer(Tokenizer):
    kind = "bpe"

    def __init__(self, hf: HFTokenizer):
        self.hf = hf
        # Text that spells "[MASK]" etc. must encode as text, never as the reserved ids (a literal
        # "[MASK]" in a corpus would otherwise become an absorbing-state target: NaN loss).
        self.hf.encode_special_tokens = True
        missing = [t for t in SPECIAL_TOKENS if hf.token_to_id(t) is None]
        if missing:
            raise DlmError(f"BPE tokenizer lacks the special tokens {missing}; train it with dlm")

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 8192) -> BPETokenizer:
        if vocab_size < 256 + len(SPECIAL_TOKENS):
            raise DlmError(f"BPE vocab_size={vocab_size} is too small; use at least {256 + len(SPECIAL_TOKENS)}")
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        hf.train_from_iterator(texts, trainer=trainer)
        return cls(hf)

    @classmethod
    def from_json(cls, text: str) -> BPETokenizer:
        try:
            return cls(HFTokenizer.from_str(text))
        except Exception as e:  # tokenizers raises a bare Exception on malformed files
            raise DlmError(f"tokenizer file is not a valid tokenizer ({e}); re-create it by training again") from None

    @property
    def added_tokens(self) -> list[str]:
        reserved = set(SPECIAL_TOKENS)
        added = self.hf.get_added_tokens_decoder()  # id → AddedToken
        return [added[i].content for i in sorted(added) if added[i].content not in reserved]

    def with_tokens(self, names: list[str]) -> BPETokenizer:
        copy = HFTokenizer.from_str(self.hf.to_str())
        copy.add_special_tokens([AddedToken(n, special=True, normalized=False) for n in names
                                 if copy.token_to_id(n) is None])
        return BPETokenizer(copy)

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int:
        return self.hf.token_to_id(token)

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def encode_array(self, text: str) -> np.ndarray:
        # Encode line by line (newlines kept) so the Rust side can use its threads; prompts and
        # corpora go through this same path, so a text always gets the same ids.
        lines = text.splitlines(keepends=True) or [text]
        out = self.hf.encode_batch(lines, add_special_tokens=False)
        return np.fromiter((i for enc in out for i in enc.ids), dtype=np.uint32)

    def decode(self, ids) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=False)

    def to_json(self) -> str:
        return self.hf.to_str()

    def vocab_and_merges(self) -> tuple[list[str], list[list[str]]]:
        """Each id's token string and the merges in the order they apply: all a byte-level BPE outside Python
        needs to give the same ids (the ONNX page's bpe.js)."""
        merges = json.loads(self.to_json())["model"]["merges"]
        pairs = [merge.split(" ") if isinstance(merge, str) else list(merge) for merge in merges]
        return [self.hf.id_to_token(i) for i in range(self.vocab_size)], pairs
