"""What every tokenizer offers: encode/decode, the four reserved ids, save/load to one file."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from dlm.errors import DlmError
from dlm.io import atomic_write_text
from dlm.special_ids import SpecialIds

SPECIAL_TOKENS = ("[MASK]", "[PAD]", "[BOS]", "[EOS]")


class Tokenizer(ABC):
    kind = "base"
    chat_markup = ""
    """'' = dlm's chat tokens (dlm.data.chat); 'chatml' = the model's own <|im_start|>/<|im_end|> turns."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""

    @abstractmethod
    def token_to_id(self, token: str) -> int: ...

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abstractmethod
    def decode(self, ids: list[int] | np.ndarray) -> str: ...

    @abstractmethod
    def to_json(self) -> str: ...

    def encode_array(self, text: str) -> np.ndarray:
        """Encode a long text to a uint32 array (subclasses vectorise this)."""
        return np.asarray(self.encode(text), dtype=np.uint32)

    @property
    def mask_id(self) -> int:
        return self.token_to_id("[MASK]")

    @property
    def pad_id(self) -> int:
        return self.token_to_id("[PAD]")

    @property
    def bos_id(self) -> int:
        return self.token_to_id("[BOS]")

    @property
    def eos_id(self) -> int:
        return self.token_to_id("[EOS]")

    @property
    def special(self) -> SpecialIds:
        """The four reserved ids, as samplers, objectives and evaluation take them."""
        return SpecialIds(mask=self.mask_id, pad=self.pad_id, bos=self.bos_id, eos=self.eos_id)

    @property
    def special_ids(self) -> list[int]:
        return [self.token_to_id(t) for t in SPECIAL_TOKENS]

    @property
    def added_tokens(self) -> list[str]:
        """Reserved tokens added after training (chat roles, end of turn), in id order."""
        return []

    def with_tokens(self, names: list[str]) -> Tokenizer:
        """A copy with `names` appended as reserved tokens: every existing id keeps its meaning, so a
        model trained with this tokenizer only needs new rows for the new ids."""
        raise NotImplementedError

    @property
    def reserved_ids(self) -> list[int]:
        """Ids no text encodes to: the four specials and any added tokens."""
        return self.special_ids + [self.token_to_id(t) for t in self.added_tokens]

    @property
    def n_real_tokens(self) -> int:
        """Ids that text can produce: the vocabulary less the reserved tokens."""
        return self.vocab_size - len(SPECIAL_TOKENS) - len(self.added_tokens)

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), self.to_json())


def load_tokenizer(path: str | Path) -> Tokenizer:
    from dlm.tokenizers.bpe import BPETokenizer
    from dlm.tokenizers.char import CharTokenizer

    path = Path(path)
    if not path.is_file():
        raise DlmError(f"tokenizer file {path} not found; pass the run folder that holds tokenizer.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DlmError(f"tokenizer file {path} is not valid JSON ({e}); re-create it by training again") from None
    if isinstance(data, dict) and data.get("dlm_tokenizer") == "hf":
        from dlm.tokenizers.hf import HFModelTokenizer

        try:
            return HFModelTokenizer.from_dict(data)
        except (KeyError, TypeError, Exception) as e:  # tokenizers raises a bare Exception on bad JSON
            raise DlmError(f"tokenizer file {path} is damaged ({type(e).__name__}: {e}); re-create it by training "
                           "again") from None
    if isinstance(data, dict) and data.get("dlm_tokenizer") == "char":
        try:
            return CharTokenizer.from_dict(data)
        except (KeyError, TypeError) as e:  # valid JSON of the wrong shape
            raise DlmError(f"tokenizer file {path} is damaged ({type(e).__name__}: {e}); "
                           "re-create it by training again") from None
    return BPETokenizer.from_json(path.read_text(encoding="utf-8"))
