"""Corpora: resolving files, tokenizing into cached splits, errors, and resumable batches."""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from dlm.data.config import DataConfig
from dlm.data.corpus import TINYSHAKESPEARE_SHA256, resolve_files, sha256_file
from dlm.data.loader import RandomWindows, eval_windows
from dlm.data.shards import prepare_corpus
from dlm.errors import DlmError


def all_tokens(corpus) -> np.ndarray:
    return np.concatenate([np.asarray(corpus.split("train")), np.asarray(corpus.split("val"))])


def check_split_sizes(corpus, total: int) -> None:
    n_val = int(total * 0.1)
    assert corpus.meta["tokens"] == {"train": total - n_val, "val": n_val}
    assert len(corpus.split("train")) == total - n_val
    assert len(corpus.split("val")) == n_val


def test_prepare_file(corpus_file: Path, corpus_text: str) -> None:
    corpus = prepare_corpus(DataConfig(source=str(corpus_file)))
    check_split_sizes(corpus, len(corpus_text))  # char tokenizer, one document: no [EOS]
    assert corpus.tokenizer.decode(all_tokens(corpus)) == corpus_text
    assert corpus.meta["sources"] == [str(corpus_file)]


def test_prepare_folder_and_glob(tmp_path: Path, corpus_text: str) -> None:
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    a, b = corpus_text[:15000], corpus_text[15000:30000]
    (folder / "a.txt").write_text(a, encoding="utf-8")
    (folder / "sub" / "b.md").write_text(b, encoding="utf-8")
    (folder / "ignored.py").write_text("print('not text')\n", encoding="utf-8")

    corpus = prepare_corpus(DataConfig(source=str(folder)))
    assert corpus.meta["sources"] == [str(folder / "a.txt"), str(folder / "sub" / "b.md")]
    check_split_sizes(corpus, len(a) + 1 + len(b))  # documents joined by one [EOS]
    ids = all_tokens(corpus)
    assert (ids == corpus.tokenizer.eos_id).sum() == 1
    assert corpus.tokenizer.decode(ids[: len(a)]) == a and ids[len(a)] == corpus.tokenizer.eos_id

    by_glob = prepare_corpus(DataConfig(source=str(folder / "**" / "*.md")))
    assert by_glob.meta["sources"] == [str(folder / "sub" / "b.md")]
    check_split_sizes(by_glob, len(b))


def test_second_call_hits_the_cache(corpus_file: Path, isolated_cache: Path) -> None:
    first = prepare_corpus(DataConfig(source=str(corpus_file)))
    assert first.folder.parent == isolated_cache / "prepared"
    stat = (first.folder / "train.bin").stat()
    second = prepare_corpus(DataConfig(source=str(corpus_file)))
    assert second.folder == first.folder
    again = (second.folder / "train.bin").stat()
    assert (again.st_ino, again.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)  # not rebuilt
    assert np.array_equal(second.split("val"), first.split("val"))
    # Other settings (or changed text) get their own folder.
    assert prepare_corpus(DataConfig(source=str(corpus_file), val_fraction=0.2)).folder != first.folder
    corpus_file.write_text(corpus_file.read_text() + "More text.\n")
    assert prepare_corpus(DataConfig(source=str(corpus_file))).folder != first.folder


def test_bpe_corpus(corpus_file: Path, corpus_text: str) -> None:
    corpus = prepare_corpus(DataConfig(source=str(corpus_file), tokenizer="bpe", vocab_size=300))
    assert corpus.tokenizer.kind == "bpe" and corpus.tokenizer.vocab_size == 300
    assert corpus.tokenizer.decode(all_tokens(corpus)) == corpus_text


@pytest.mark.parametrize("content", [b"", b"\n"])
def test_empty_corpus(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "empty.txt"
    path.write_bytes(content)
    with pytest.raises(DlmError, match="empty|only"):
        prepare_corpus(DataConfig(source=str(path)))


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DlmError, match="not found"):
        prepare_corpus(DataConfig(source=str(tmp_path / "nope.txt")))
    with pytest.raises(DlmError, match="matches no files"):
        prepare_corpus(DataConfig(source=str(tmp_path / "*.nothing")))


def test_folder_without_text_files(tmp_path: Path) -> None:
    (tmp_path / "code.py").write_text("x = 1\n")
    with pytest.raises(DlmError, match="no text files"):
        prepare_corpus(DataConfig(source=str(tmp_path)))


@pytest.mark.parametrize("tokenizer", ["char", "bpe"])
def test_non_utf8_file(tmp_path: Path, tokenizer: str) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("café au lait\n".encode("latin-1") * 50)
    with pytest.raises(DlmError, match="UTF-8"):
        prepare_corpus(DataConfig(source=str(path), tokenizer=tokenizer, vocab_size=300))


def test_given_tokenizer_rejects_unknown_characters(corpus_file: Path, tmp_path: Path) -> None:
    tok = prepare_corpus(DataConfig(source=str(corpus_file))).tokenizer
    other = tmp_path / "other.txt"
    other.write_text("Ça va? " * 100, encoding="utf-8")
    with pytest.raises(DlmError, match="'Ç'"):
        prepare_corpus(DataConfig(source=str(other)), tokenizer=tok)


def test_hf_dataset_without_the_datasets_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(DlmError, match="datasets"):
        prepare_corpus(DataConfig(source="hf:someone/some-corpus"))


def test_random_windows_are_windows_of_the_stream() -> None:
    tokens = np.arange(1000, dtype=np.uint16)
    batch = RandomWindows(tokens, 16, seed=0).next_batch(8)
    assert batch.shape == (8, 16) and batch.dtype == torch.int64
    assert (batch.diff(dim=1) == 1).all()  # consecutive tokens
    assert (batch[:, -1] < 1000).all()


def test_random_windows_resume_exactly() -> None:
    tokens = np.arange(5000, dtype=np.uint16)
    loader = RandomWindows(tokens, 32, seed=3)
    for _ in range(3):
        loader.next_batch(4)
    state = loader.state_dict()
    expected = [loader.next_batch(4) for _ in range(2)]
    resumed = RandomWindows(tokens, 32, seed=999)  # a different seed: the state wins
    resumed.load_state_dict(state)
    for want in expected:
        assert torch.equal(resumed.next_batch(4), want)
    # The same seed gives the same stream from the start.
    assert torch.equal(RandomWindows(tokens, 32, seed=3).next_batch(4), RandomWindows(tokens, 32, seed=3).next_batch(4))


def test_random_windows_need_enough_tokens() -> None:
    with pytest.raises(DlmError, match="block_size"):
        RandomWindows(np.arange(10, dtype=np.uint16), 16, seed=0)


def test_eval_windows_tile_the_split() -> None:
    windows = eval_windows(np.arange(100, dtype=np.uint16), 32)
    assert windows.shape == (3, 32)
    assert torch.equal(windows.flatten(), torch.arange(96))
    with pytest.raises(DlmError, match="has 10 tokens, fewer than block_size=32"):
        eval_windows(np.arange(10, dtype=np.uint16), 32)


def test_tinyshakespeare_from_env(shakespeare: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DLM_TINYSHAKESPEARE", str(shakespeare))
    assert resolve_files("tinyshakespeare") == [shakespeare]
    corpus = prepare_corpus(DataConfig(source="tinyshakespeare"))
    n = len(shakespeare.read_text(encoding="utf-8"))
    assert n == 1_115_394
    check_split_sizes(corpus, n)
    assert corpus.meta["tokens"]["train"] == 1_003_855
    assert corpus.tokenizer.vocab_size == 65 + 4


def test_tinyshakespeare_env_pointing_nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DLM_TINYSHAKESPEARE", str(tmp_path / "missing.txt"))
    with pytest.raises(DlmError, match="DLM_TINYSHAKESPEARE"):
        resolve_files("tinyshakespeare")


def refuse_network(*args, **kwargs):
    raise urllib.error.URLError("network is unreachable (test)")


def test_offline_download_failure_mentions_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(urllib.request, "urlopen", refuse_network)
    with pytest.raises(DlmError, match="--data") as info:
        prepare_corpus(DataConfig(source="tinyshakespeare"))
    assert "DLM_TINYSHAKESPEARE" in str(info.value)


def test_cached_copy_is_used_offline(shakespeare: Path, isolated_cache: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    assert sha256_file(shakespeare) == TINYSHAKESPEARE_SHA256
    cached = isolated_cache / "corpora" / "tinyshakespeare.txt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(shakespeare.read_bytes())
    monkeypatch.setattr(urllib.request, "urlopen", refuse_network)
    assert resolve_files("tinyshakespeare") == [cached]
    # A damaged cached copy is not trusted: it fails its checksum and a download is attempted.
    cached.write_bytes(b"not shakespeare")
    with pytest.raises(DlmError, match="could not download"):
        resolve_files("tinyshakespeare")


def test_bpe_corpus_that_spells_special_tokens(tmp_path: Path, corpus_text: str) -> None:
    # Text about masked LMs says "[MASK]"; it must stay text, never become the absorbing-state id
    # (a [MASK] target has probability 0 under SUBS: the loss would be NaN).
    path = tmp_path / "mlm.txt"
    text = corpus_text[:20000] + "Fill the [MASK] token; [PAD] [BOS] and [EOS] are words here.\n" * 20
    path.write_text(text, encoding="utf-8")
    corpus = prepare_corpus(DataConfig(source=str(path), tokenizer="bpe", vocab_size=300))
    ids = all_tokens(corpus)
    assert not np.isin(ids, corpus.tokenizer.special_ids).any()
    assert corpus.tokenizer.decode(ids) == text


def test_a_verified_local_copy_is_cached_for_offline_use(shakespeare: Path, monkeypatch: pytest.MonkeyPatch,
                                                         isolated_cache: Path) -> None:
    from dlm.data.corpus import tinyshakespeare_path

    monkeypatch.setenv("DLM_TINYSHAKESPEARE", str(shakespeare))
    assert tinyshakespeare_path() == shakespeare
    monkeypatch.delenv("DLM_TINYSHAKESPEARE")

    def offline(*args, **kwargs):
        raise AssertionError("must not download")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    cached = tinyshakespeare_path()
    assert cached.parent.parent == isolated_cache and cached.read_bytes() == shakespeare.read_bytes()


def test_a_bpe_tokenizer_learns_nothing_from_the_validation_text(tmp_path: Path) -> None:
    # A word that only the tail (the val split) holds, repeated so often that BPE on the whole text would make
    # it one token; learnt from the text before the tail it stays in pieces, and the splits still round-trip.
    train_part = "the cat sat on the mat and the dog lay on the log.\n" * 400
    tail = "zqxjv " * 300
    path = tmp_path / "corpus.txt"
    path.write_text(train_part + tail, encoding="utf-8")
    corpus = prepare_corpus(DataConfig(source=str(path), tokenizer="bpe", vocab_size=400), root=tmp_path / "c")
    tok = corpus.tokenizer
    assert len(tok.encode(" zqxjv")) > 1  # not learnt
    assert len(tok.encode(" the cat")) <= 2  # learnt from the training text
    assert tok.decode(all_tokens(corpus)) == train_part + tail
    assert "zqxjv" in tok.decode(np.asarray(corpus.split("val")))  # the tail is in the val split
