"""Documents as a stream of text chunks, from local files or a Hugging Face dataset.

A chunk never splits a line, so tokenizing the chunks one by one gives exactly the ids of
tokenizing each whole document (both tokenizers work within lines). Nothing here holds a whole
corpus in memory: files are read a few MB at a time and HF datasets are streamed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dlm.data.corpus import resolve_files
from dlm.errors import DlmError

CHUNK_CHARS = 1 << 22  # ~4M characters per chunk


@dataclass(frozen=True)
class Chunk:
    doc: int
    """Index of the document this text belongs to (documents are separated by [EOS])."""
    text: str


def file_chunks(path: Path, doc: int, chunk_chars: int = CHUNK_CHARS) -> Iterator[Chunk]:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            while True:
                text = f.read(chunk_chars)
                if not text:
                    return
                text += f.readline()  # finish the line: chunks end at line boundaries
                yield Chunk(doc, text)
    except UnicodeDecodeError as e:
        raise DlmError(f"{path} is not UTF-8 text ({e.reason}); convert it to UTF-8") from None


def hf_documents(spec: str) -> Iterator[str]:
    """Texts of `hf:NAME[:CONFIG]` (the train split, streamed; the 'text' column)."""
    try:
        import datasets
    except ImportError:
        raise DlmError(f"--data {spec} needs the optional `datasets` package: pip install 'dlm[hf]'") from None
    name, _, config = spec.removeprefix("hf:").partition(":")
    try:
        stream = datasets.load_dataset(name, config or None, split="train", streaming=True)
    except Exception as e:  # datasets raises many types (offline, unknown name, …)
        raise DlmError(f"could not open Hugging Face dataset {name!r} ({type(e).__name__}: {e}); "
                       "check the name, or pass local files with --data") from None
    for example in stream:
        if "text" not in example:
            raise DlmError(f"dataset {name!r} has no 'text' column (columns: {', '.join(example)})")
        yield example["text"]


def describe(spec: str) -> list[str]:
    """What the corpus is made of, for the cache key and meta.json: file paths or the dataset name."""
    return [spec] if spec.startswith("hf:") else [str(p) for p in resolve_files(spec)]


def corpus_chunks(spec: str, chunk_chars: int = CHUNK_CHARS) -> Iterator[Chunk]:
    if spec.startswith("hf:"):
        for doc, text in enumerate(hf_documents(spec)):
            yield Chunk(doc, text)
        return
    for doc, path in enumerate(resolve_files(spec)):
        yield from file_chunks(path, doc, chunk_chars)
