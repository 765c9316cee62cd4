"""Tokenize a corpus once into a uint16/uint32 memmap per split, streaming, cached by content.

The token stream is the documents' ids joined by [EOS] (a single document gets none); its first
(1 − val_fraction) is train, the rest val — for Tiny Shakespeare the standard 90/10 split that
nanoGPT and microDLM use, so numbers compare. A prepared corpus is a folder:

    tokenizer.json   train.bin   val.bin   meta.json   (dtype, token counts, sources)

found again by a key over the sources (paths, sizes, mtimes, or the dataset name) and the
tokenizer settings. Preparation streams: the text is read in line-aligned chunks, tokenized by a
pool of worker threads (the Rust BPE and numpy release the GIL) and appended to disk, so a corpus
larger than memory works; the result equals tokenizing the whole text at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlm.data.config import DataConfig
from dlm.data.corpus import cache_dir
from dlm.data.sources import CHUNK_CHARS, Chunk, corpus_chunks, describe
from dlm.errors import DlmError
from dlm.io import atomic_write_json
from dlm.progress import Progress
from dlm.tokenizers import BPETokenizer, CharTokenizer, Tokenizer, load_tokenizer

FORMAT_VERSION = 3  # 3: a BPE tokenizer learns from the text before the validation tail only
# A BPE tokenizer's merges come from the text before the validation tail, so that the tokenizer scoring
# the val split knows nothing of it (its names and phrases would otherwise be whole tokens). The tail is
# val_fraction of the tokens; holding back a quarter more of the characters covers a tail that packs up to
# a quarter more characters into a token than the rest.
HELD_OUT_MARGIN = 1.25


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


def _corpus_key(spec: str, tokenizer: str, vocab_size: int, val_fraction: float) -> str:
    digest = hashlib.sha256(f"v{FORMAT_VERSION}|{tokenizer}|{vocab_size}|{val_fraction}".encode())
    for source in describe(spec):
        path = Path(source)
        if path.is_file():
            stat = path.stat()
            digest.update(f"|{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        else:
            digest.update(f"|{source}".encode())
    return digest.hexdigest()[:16]


def text_before_val(spec: str, chunk_chars: int, val_fraction: float) -> Iterator[Chunk]:
    """The corpus's chunks up to where its validation tail may begin (see HELD_OUT_MARGIN): two passes
    over the source, one to count its characters."""
    total = sum(len(chunk.text) for chunk in corpus_chunks(spec, chunk_chars))
    left = int(total * (1 - HELD_OUT_MARGIN * val_fraction))
    for chunk in corpus_chunks(spec, chunk_chars):
        if left <= 0:
            return
        yield Chunk(chunk.doc, chunk.text[:left])
        left -= len(chunk.text)


def build_tokenizer(chunks: Iterator[Chunk], kind: str, vocab_size: int) -> Tokenizer:
    if kind == "char":
        chars: set[str] = set()
        for chunk in chunks:
            chars.update(chunk.text)
        if not chars:
            raise DlmError("the corpus is empty; give text to train on")
        return CharTokenizer(sorted(chars))
    return BPETokenizer.train((chunk.text for chunk in chunks), vocab_size=vocab_size)


def tokenize_documents(docs: list[str], tokenizer: Tokenizer) -> np.ndarray:
    """In-memory reference: each document's ids, joined by [EOS]."""
    eos = np.array([tokenizer.eos_id], dtype=np.uint32)
    parts: list[np.ndarray] = []
    for i, doc in enumerate(docs):
        if i:
            parts.append(eos)
        parts.append(tokenizer.encode_array(doc))
    return np.concatenate(parts)


def stream_tokens(chunks: Iterator[Chunk], tokenizer: Tokenizer, out_path: Path, dtype: np.dtype,
                  workers: int | None = None, progress: bool = True) -> tuple[int, bool]:
    """Tokenize chunks in parallel (order kept) and append them to out_path.

    Returns (token count, whether any chunk held more than whitespace)."""
    workers = workers or min(8, os.cpu_count() or 1)
    eos = np.array([tokenizer.eos_id], dtype=dtype)
    count, last_doc, has_text = 0, None, False
    bar = Progress(unit="tok", unit_scale=True, desc="tokenizing", enabled=progress, leave=False)
    with open(out_path, "wb") as f, ThreadPoolExecutor(workers) as pool:
        pending: list = []

        def drain(keep: int) -> None:
            nonlocal count, last_doc
            while len(pending) > keep:
                doc, future = pending.pop(0)
                ids = future.result().astype(dtype)
                if last_doc is not None and doc != last_doc:
                    f.write(eos.tobytes())
                    count += 1
                last_doc = doc
                f.write(ids.tobytes())
                count += len(ids)
                bar.update(len(ids))

        for chunk in chunks:
            has_text = has_text or not chunk.text.isspace()
            pending.append((chunk.doc, pool.submit(tokenizer.encode_array, chunk.text)))
            drain(keep=2 * workers)  # bounded memory: a few chunks in flight
        drain(keep=0)
        f.flush()
        os.fsync(f.fileno())
    bar.close()
    return count, has_text


def prepare_corpus(data: DataConfig, *, tokenizer: Tokenizer | None = None, root: Path | None = None,
                   chunk_chars: int = CHUNK_CHARS, progress: bool = False) -> PreparedCorpus:
    """Tokenize the corpus `data` names (or find it in the cache) and return its splits and tokenizer.

    `data.source`: 'tinyshakespeare', a file, a folder, a glob, or 'hf:NAME[:CONFIG]'.
    `tokenizer` encodes with an existing tokenizer (a trained model's, to score new text or resume)
    instead of building one from the corpus as `data.tokenizer` and `data.vocab_size` say.
    """
    spec, val_fraction = data.source, data.val_fraction
    tok_key = data.tokenizer if tokenizer is None else \
        "given:" + hashlib.sha256(tokenizer.to_json().encode()).hexdigest()[:16]
    key = _corpus_key(spec, tok_key, data.vocab_size, val_fraction)
    folder = (root or cache_dir() / "prepared") / key
    meta_path = folder / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        tok = tokenizer or load_tokenizer(folder / "tokenizer.json")
        return PreparedCorpus(folder, tok, meta)

    if tokenizer is not None:
        tok = tokenizer
    elif data.tokenizer == "char":  # the alphabet of the whole corpus, so that val has no unknown character
        tok = build_tokenizer(corpus_chunks(spec, chunk_chars), "char", data.vocab_size)
    else:
        tok = build_tokenizer(text_before_val(spec, chunk_chars, val_fraction), data.tokenizer, data.vocab_size)
    dtype = np.dtype(np.uint16 if tok.vocab_size <= np.iinfo(np.uint16).max else np.uint32)
    work = folder.with_name(f".tmp-{key}-{os.getpid()}")  # renamed into place when complete
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        total, has_text = stream_tokens(corpus_chunks(spec, chunk_chars), tok, work / "train.bin", dtype,
                                        progress=progress)
        n_val = int(total * val_fraction)
        if total - n_val < 2 or n_val < 2:
            raise DlmError(f"corpus {spec} has only {total} tokens; it needs enough for both a train "
                           f"and a val split (val_fraction={val_fraction})")
        if not has_text:
            raise DlmError(f"the corpus {spec} is empty (only whitespace); give text to train on")
        # Move the tail into val.bin, then cut it off train.bin: no second copy of the corpus.
        with open(work / "train.bin", "r+b") as f:
            f.seek((total - n_val) * dtype.itemsize)
            (work / "val.bin").write_bytes(f.read())
            f.truncate((total - n_val) * dtype.itemsize)
        tok.save(work / "tokenizer.json")
        meta = {"format": FORMAT_VERSION, "dtype": dtype.name, "tokenizer": tok.kind,
                "vocab_size": tok.vocab_size, "sources": describe(spec),
                "tokens": {"train": total - n_val, "val": n_val}, "val_fraction": val_fraction}
        atomic_write_json(work / "meta.json", meta)
        if folder.exists():  # another process finished first: keep theirs
            shutil.rmtree(work, ignore_errors=True)
        else:
            os.replace(work, folder)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return PreparedCorpus(folder, tokenizer or load_tokenizer(folder / "tokenizer.json"), meta)
