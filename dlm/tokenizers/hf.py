"""A Hugging Face model's own tokenizer (its `tokenizer.json`), for `transformers` backbones.

dlm's four reserved roles map onto the model's special tokens: [MASK] → its mask token, [PAD] →
its pad token, [BOS] → its BOS or CLS token, [EOS] → its EOS or SEP token. A causal LM has no mask
token, and its pad token is often its end of text or of a turn: it gets dlm's own `<|mask|>` and
`<|pad|>`, appended after its ids (`from_causal_folder`). A tokenizer that has ChatML's
`<|im_start|>`/`<|im_end|>` (SmolLM2, Qwen2) keeps its own chat markup for chat fine-tuning
(`chat_markup`). Every special token of the model is reserved (never produced from text). Only the
`tokenizers` library is needed, so a trained run samples without `transformers`; the JSON it saves
holds the whole tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as RustTokenizer

from dlm.errors import DlmError
from dlm.tokenizers.base import Tokenizer

ROLES = {"[MASK]": ("mask_token",), "[PAD]": ("pad_token",), "[BOS]": ("bos_token", "cls_token"),
         "[EOS]": ("eos_token", "sep_token")}
CAUSAL_ADDED = {"[MASK]": "<|mask|>", "[PAD]": "<|pad|>"}
CHATML = ("<|im_start|>", "<|im_end|>")


def _named_tokens(folder: Path) -> dict:
    named: dict = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (folder / name).is_file():
            named.update({k: v for k, v in json.loads((folder / name).read_text()).items() if k.endswith("_token")})
    return {k: v.get("content") if isinstance(v, dict) else v for k, v in named.items() if v}


def _read_rust(folder: Path) -> RustTokenizer:
    if not (folder / "tokenizer.json").is_file():
        raise DlmError(f"{folder} has no tokenizer.json (a fast tokenizer); save one with "
                       "tokenizer.save_pretrained")
    return RustTokenizer.from_file(str(folder / "tokenizer.json"))


class HFModelTokenizer(Tokenizer):
    kind = "hf"

    def __init__(self, rust: RustTokenizer, roles: dict[str, str], added: list[str] | None = None,
                 chat_markup: str = ""):
        self.rust, self.roles = rust, dict(roles)  # dlm role ([MASK], ...) → the model's token text
        self.chat_markup = chat_markup
        self.rust.no_padding()  # dlm builds its own canvases and windows
        self.rust.no_truncation()
        self.added = list(added or [])
        missing = [role for role, token in self.roles.items() if self.rust.token_to_id(token) is None]
        if missing:
            raise DlmError(f"the Hugging Face tokenizer has no token for {', '.join(missing)}; a masked-LM "
                           "backbone needs mask, pad, CLS/BOS and SEP/EOS tokens")
        self._special = sorted({i for i in (self.rust.token_to_id(t.content) for t in
                                            self.rust.get_added_tokens_decoder().values()) if i is not None})

    @classmethod
    def from_folder(cls, folder: str | Path) -> HFModelTokenizer:
        """From a model folder written by save_pretrained (tokenizer.json and its special tokens)."""
        folder = Path(folder)
        rust, named = _read_rust(folder), _named_tokens(folder)
        roles = {}
        for role, keys in ROLES.items():
            value = next((named[k] for k in keys if named.get(k)), None)
            if value is None:
                raise DlmError(f"{folder}: the tokenizer names no {' or '.join(keys)}; a masked-LM backbone needs one")
            roles[role] = value
        return cls(rust, roles)

    @classmethod
    def from_causal_folder(cls, folder: str | Path) -> HFModelTokenizer:
        """A causal LM's tokenizer with dlm's `<|mask|>` and `<|pad|>` appended; its EOS (or, failing
        that, its BOS) ends a text, its BOS (or EOS) starts one."""
        from tokenizers import AddedToken

        folder = Path(folder)
        rust, named = _read_rust(folder), _named_tokens(folder)
        end = named.get("eos_token") or named.get("bos_token")
        if end is None or rust.token_to_id(end) is None:
            raise DlmError(f"{folder}: the tokenizer names no EOS or BOS token; a causal LM needs one to end a text")
        start = named.get("bos_token") if rust.token_to_id(named.get("bos_token") or "") is not None else end
        added = list(CAUSAL_ADDED.values())
        rust.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in added
                                 if rust.token_to_id(t) is None])
        markup = "chatml" if all(rust.token_to_id(t) is not None for t in CHATML) else ""
        return cls(rust, {**CAUSAL_ADDED, "[BOS]": start, "[EOS]": end}, added, chat_markup=markup)

    @property
    def vocab_size(self) -> int:
        return self.rust.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int:
        token = self.roles.get(token, token)
        found = self.rust.token_to_id(token)
        if found is None:
            raise KeyError(token)
        return found

    @property
    def special_ids(self) -> list[int]:
        return [self.token_to_id(role) for role in ("[MASK]", "[PAD]", "[BOS]", "[EOS]")]

    @property
    def added_tokens(self) -> list[str]:
        return list(self.added)

    @property
    def reserved_ids(self) -> list[int]:
        return sorted(set(self._special) | set(self.special_ids) | {self.token_to_id(t) for t in self.added})

    @property
    def n_real_tokens(self) -> int:
        return self.vocab_size - len(self.reserved_ids)

    def with_tokens(self, names: list[str]) -> HFModelTokenizer:
        from tokenizers import AddedToken

        copy = RustTokenizer.from_str(self.rust.to_str())
        copy.add_special_tokens([AddedToken(n, special=True, normalized=False) for n in names
                                 if copy.token_to_id(n) is None])
        return HFModelTokenizer(copy, self.roles, self.added + [n for n in names if n not in self.added],
                                self.chat_markup)

    def encode(self, text: str) -> list[int]:
        return self.rust.encode(text, add_special_tokens=False).ids

    def encode_array(self, text: str) -> np.ndarray:
        lines = text.splitlines(keepends=True) or [text]
        out = self.rust.encode_batch(lines, add_special_tokens=False)
        return np.fromiter((i for enc in out for i in enc.ids), dtype=np.uint32)

    def decode(self, ids) -> str:
        return self.rust.decode([int(i) for i in ids], skip_special_tokens=False)

    def to_json(self) -> str:
        return json.dumps({"dlm_tokenizer": "hf", "roles": self.roles, "added_tokens": self.added,
                           "chat_markup": self.chat_markup, "tokenizer": json.loads(self.rust.to_str())},
                          ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict) -> HFModelTokenizer:
        return cls(RustTokenizer.from_str(json.dumps(data["tokenizer"])), data["roles"], data.get("added_tokens"),
                   data.get("chat_markup", ""))
