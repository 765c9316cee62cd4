"""Streaming, chunked, multi-threaded tokenization equals the in-memory result; hf: sources."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest

from dlm.data.config import DataConfig
from dlm.data.corpus import read_documents
from dlm.data.shards import HELD_OUT_MARGIN, prepare_corpus, tokenize_documents
from dlm.errors import DlmError
from dlm.tokenizers import BPETokenizer


def write_corpus(folder: Path, texts: list[str]) -> list[Path]:
    folder.mkdir()
    paths = []
    for i, text in enumerate(texts):
        path = folder / f"doc{i:02d}.txt"
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_streaming_multi_file_equals_in_memory(tmp_path: Path, corpus_text: str, kind: str):
    lines = corpus_text.splitlines(keepends=True)
    texts = ["".join(lines[i::4]) for i in range(4)] + ["ünïcödé line\n\nand a last line without newline"]
    paths = write_corpus(tmp_path / "corpus", texts)
    # Tiny chunks: many chunk boundaries inside each document, all tokenized by worker threads.
    data = DataConfig(source=str(tmp_path / "corpus"), tokenizer=kind, vocab_size=300, val_fraction=0.1)
    prepared = prepare_corpus(data, chunk_chars=257)
    reference = tokenize_documents(read_documents(paths), prepared.tokenizer)
    streamed = np.concatenate([prepared.split("train"), prepared.split("val")])
    assert np.array_equal(streamed, reference)
    assert len(prepared.split("val")) == int(len(reference) * 0.1)
    assert (reference == prepared.tokenizer.eos_id).sum() == len(texts) - 1  # one [EOS] between documents


def test_streamed_bpe_tokenizer_matches_one_trained_in_memory(tmp_path: Path, corpus_text: str):
    write_corpus(tmp_path / "corpus", [corpus_text])
    data = DataConfig(source=str(tmp_path / "corpus"), tokenizer="bpe", vocab_size=300)
    streamed = prepare_corpus(data, chunk_chars=1000).tokenizer
    # both learn from the text before the validation tail (and its margin) only
    before_val = corpus_text[:int(len(corpus_text) * (1 - HELD_OUT_MARGIN * data.val_fraction))]
    in_memory = BPETokenizer.train([before_val], vocab_size=300)
    sample = corpus_text[:2000]
    assert streamed.encode(sample) == in_memory.encode(sample)


def test_hf_dataset_source_streams_the_text_column(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   corpus_text: str):
    calls = []

    def load_dataset(name, config, split, streaming):
        calls.append((name, config, split, streaming))
        return iter({"text": para, "id": i} for i, para in enumerate(corpus_text.split("\n\n")))

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    prepared = prepare_corpus(DataConfig(source="hf:someone/corpus:sample", tokenizer="char", val_fraction=0.1))
    assert calls[0] == ("someone/corpus", "sample", "train", True)
    docs = corpus_text.split("\n\n")
    reference = tokenize_documents(docs, prepared.tokenizer)
    assert np.array_equal(np.concatenate([prepared.split("train"), prepared.split("val")]), reference)


def test_hf_source_without_datasets_installed_says_how_to_install(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails
    with pytest.raises(DlmError, match=r"pip install 'dlm\[hf\]'"):
        prepare_corpus(DataConfig(source="hf:someone/corpus"))


def test_an_interrupted_preparation_leaves_no_cache_entry(tmp_path: Path, corpus_text: str, monkeypatch):
    from dlm.data import shards

    write_corpus(tmp_path / "corpus", [corpus_text])

    def broken(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(shards, "stream_tokens", broken)
    with pytest.raises(KeyboardInterrupt):
        prepare_corpus(DataConfig(source=str(tmp_path / "corpus")), root=tmp_path / "cache")
    assert not any((tmp_path / "cache").iterdir())  # no half-written folder to be mistaken for a result
    monkeypatch.undo()
