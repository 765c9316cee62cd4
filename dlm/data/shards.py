"""Tokenize a corpus once into a uint16/uint32 memmap per split, cached by content.

The token stream is the documents' ids joined by [EOS] (a single document gets none); its first
(1 − val_fraction) is train, the rest val — for Tiny Shakespeare the standard 90/10 split that
nanoGPT and microDLM use, so numbers compare. A prepared corpus is a folder:

    tokenizer.json   train.bin   val.bin   meta.json   (dtype, token counts, sources)

and is found again by a key over the files' sizes, mtimes and paths and the tokenizer settings.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlm.data.corpus import cache_dir, read_documents, resolve_files
from dlm.errors import DlmError
from dlm.io import atomic_write_bytes, atomic_write_json
from dlm.tokenizers import BPETokenizer, CharTokenizer, Tokenizer, load_tokenizer

FORMAT_VERSION = 1


@dataclass
class PreparedCorpus:
    folder: Path
    tokenizer: Tokenizer
    meta: dict

    def split(self, name: str) -> np.ndarray:
        """The token ids of a split as a read-only memmap."""
        if name not in ("train", "val"):
            raise DlmError(f"unknown split {name!r}; use train or val")
        return np.memmap(self.folder / f"{name}.bin", dtype=self.meta["dtype"], mode="r")


def _corpus_key(files: list[Path], tokenizer: str, vocab_size: int, val_fraction: float) -> str:
    digest = hashlib.sha256(f"v{FORMAT_VERSION}|{tokenizer}|{vocab_size}|{val_fraction}".encode())
    for path in files:
        stat = path.stat()
        digest.update(f"|{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def build_tokenizer(docs: list[str], kind: str, vocab_size: int) -> Tokenizer:
    if kind == "char":
        return CharTokenizer.from_text("".join(docs))
    return BPETokenizer.train(docs, vocab_size=vocab_size)


def tokenize_documents(docs: list[str], tokenizer: Tokenizer) -> np.ndarray:
    eos = np.array([tokenizer.eos_id], dtype=np.uint32)
    parts: list[np.ndarray] = []
    for i, doc in enumerate(docs):
        if i:
            parts.append(eos)
        parts.append(tokenizer.encode_array(doc))
    return np.concatenate(parts)


def prepare_corpus(spec: str, tokenizer: str = "char", vocab_size: int = 8192,
                   val_fraction: float = 0.1, tokenizer_override: Tokenizer | None = None,
                   root: Path | None = None) -> PreparedCorpus:
    """Tokenize `spec` (or find it in the cache) and return its splits and tokenizer.

    `tokenizer_override` encodes with an existing tokenizer (evaluating a trained model on new
    text) instead of building one from the corpus.
    """
    files = resolve_files(spec)
    key = _corpus_key(files, tokenizer if tokenizer_override is None else "given:"
                      + hashlib.sha256(tokenizer_override.to_json().encode()).hexdigest()[:16],
                      vocab_size, val_fraction)
    folder = (root or cache_dir() / "prepared") / key
    meta_path = folder / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        tok = tokenizer_override or load_tokenizer(folder / "tokenizer.json")
        return PreparedCorpus(folder, tok, meta)

    docs = read_documents(files)
    tok = tokenizer_override or build_tokenizer(docs, tokenizer, vocab_size)
    ids = tokenize_documents(docs, tok)
    n_val = int(len(ids) * val_fraction)
    if len(ids) - n_val < 2 or n_val < 2:
        raise DlmError(f"corpus {spec} has only {len(ids)} tokens; it needs enough for both a train "
                       f"and a val split (val_fraction={val_fraction})")
    dtype = np.uint16 if tok.vocab_size <= np.iinfo(np.uint16).max else np.uint32
    splits = {"train": ids[: len(ids) - n_val], "val": ids[len(ids) - n_val:]}
    for name, arr in splits.items():
        atomic_write_bytes(folder / f"{name}.bin", arr.astype(dtype).tobytes())
    tok.save(folder / "tokenizer.json")
    meta = {"format": FORMAT_VERSION, "dtype": np.dtype(dtype).name, "tokenizer": tok.kind,
            "vocab_size": tok.vocab_size, "sources": [str(p) for p in files],
            "tokens": {name: int(len(arr)) for name, arr in splits.items()},
            "val_fraction": val_fraction}
    atomic_write_json(meta_path, meta)  # written last: its presence marks a complete folder
    return PreparedCorpus(folder, tok, meta)
