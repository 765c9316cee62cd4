"""Character tokenizer: one id per distinct character of the training corpus, then the specials."""

from __future__ import annotations

import json

import numpy as np

from dlm.errors import DlmError
from dlm.tokenizers.base import SPECIAL_TOKENS, Tokenizer


def _describe(char: str) -> str:
    return f"{char!r} (U+{ord(char):04X})"


class CharTokenizer(Tokenizer):
    """Ids 0..n-1 are the corpus characters in code-point order; the four specials follow.

    A character outside the vocabulary is an error that names it (no silent fallback: a
    replaced character would change the text the model is scored on).
    """

    kind = "char"

    def __init__(self, chars: list[str], added: list[str] | tuple[str, ...] = ()):
        if not chars:
            raise DlmError("cannot build a character tokenizer from empty text; give a non-empty corpus")
        self.chars = sorted(set(chars))
        self.added = list(added)
        self.itos = self.chars + list(SPECIAL_TOKENS) + self.added
        self.stoi = {s: i for i, s in enumerate(self.itos)}
        self._codepoints = np.array([ord(c) for c in self.chars], dtype=np.uint32)

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    @classmethod
    def from_dict(cls, data: dict) -> CharTokenizer:
        return cls(list(data["chars"]), data.get("added_tokens", []))

    @property
    def added_tokens(self) -> list[str]:
        return list(self.added)

    def with_tokens(self, names: list[str]) -> CharTokenizer:
        return CharTokenizer(self.chars, self.added + [n for n in names if n not in self.stoi])

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def token_to_id(self, token: str) -> int:
        return self.stoi[token]

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def encode_array(self, text: str) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = np.searchsorted(self._codepoints, codes).astype(np.uint32)
        bad = (ids >= len(self.chars)) | (self._codepoints[np.minimum(ids, len(self.chars) - 1)] != codes)
        if bad.any():
            char = chr(int(codes[np.argmax(bad)]))
            raise DlmError(f"character {_describe(char)} is not in the tokenizer's vocabulary "
                           f"({len(self.chars)} characters from the training corpus); remove it from the text")
        return ids

    def decode(self, ids) -> str:
        return "".join(self.itos[int(i)] for i in ids)

    def to_json(self) -> str:
        data = {"dlm_tokenizer": "char", "chars": "".join(self.chars), "special_tokens": list(SPECIAL_TOKENS)}
        if self.added:
            data["added_tokens"] = self.added
        return json.dumps(data, ensure_ascii=False)
