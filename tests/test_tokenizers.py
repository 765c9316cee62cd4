"""Character and byte-level BPE tokenizers: exact round trips, reserved ids, save/load, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlm.errors import DlmError
from dlm.tokenizers import SPECIAL_TOKENS, BPETokenizer, CharTokenizer, Tokenizer, load_tokenizer

UNICODE_TEXT = "naïve café — 日本語 🙂\n\ttabs, \"quotes\" & símbolos: ¿qué?\r\nend"


@pytest.fixture(scope="module")
def bpe(corpus_text: str) -> BPETokenizer:
    # Training on ~40 KB takes well under a second; share one tokenizer across the module.
    return BPETokenizer.train([corpus_text], vocab_size=320)


def test_char_round_trip(corpus_text: str) -> None:
    tok = CharTokenizer.from_text(corpus_text)
    sample = corpus_text[:2000]
    assert "\n" in sample and "." in sample and '"' in corpus_text
    assert tok.decode(tok.encode(sample)) == sample
    assert tok.decode(tok.encode(corpus_text)) == corpus_text
    # One id per character, and the ids of text are exactly the non-special ids.
    assert len(tok.encode(sample)) == len(sample)
    assert tok.n_real_tokens == len(set(corpus_text))


def test_char_round_trip_unicode() -> None:
    tok = CharTokenizer.from_text(UNICODE_TEXT)
    assert tok.decode(tok.encode(UNICODE_TEXT)) == UNICODE_TEXT


def test_bpe_round_trip(bpe: BPETokenizer, corpus_text: str) -> None:
    assert bpe.vocab_size == 320
    for text in (corpus_text[:3000], UNICODE_TEXT, "", "\n\n", "  leading and trailing spaces  "):
        assert bpe.decode(bpe.encode(text)) == text
    # BPE actually merges: the trained corpus needs far fewer tokens than bytes.
    assert len(bpe.encode(corpus_text[:3000])) < 0.6 * len(corpus_text[:3000].encode())


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_special_ids(kind: str, bpe: BPETokenizer, corpus_text: str) -> None:
    tok: Tokenizer = CharTokenizer.from_text(corpus_text) if kind == "char" else bpe
    ids = tok.special_ids
    assert len(set(ids)) == 4
    assert [tok.mask_id, tok.pad_id, tok.bos_id, tok.eos_id] == ids
    for name, i in zip(SPECIAL_TOKENS, ids, strict=True):
        assert tok.token_to_id(name) == i
        assert 0 <= i < tok.vocab_size
    assert tok.n_real_tokens == tok.vocab_size - 4
    # Plain text never encodes to a reserved id (text like "[MASK]" is spelled out).
    text_ids = set(tok.encode(corpus_text[:2000]))
    assert not text_ids & set(ids)
    if kind == "bpe":
        assert not set(tok.encode("[MASK] [PAD] [BOS] [EOS]")) & set(ids)


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_save_load_identical(kind: str, bpe: BPETokenizer, corpus_text: str, tmp_path: Path) -> None:
    tok: Tokenizer = CharTokenizer.from_text(corpus_text) if kind == "char" else bpe
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    loaded = load_tokenizer(path)
    assert type(loaded) is type(tok)
    assert loaded.vocab_size == tok.vocab_size
    assert loaded.special_ids == tok.special_ids
    text = corpus_text[:3000] if kind == "char" else corpus_text[:3000] + UNICODE_TEXT
    assert loaded.encode(text) == tok.encode(text)


def test_char_unknown_character_names_it(corpus_text: str) -> None:
    tok = CharTokenizer.from_text(corpus_text)
    assert "é" not in corpus_text
    with pytest.raises(DlmError, match=r"'é' \(U\+00E9\)"):
        tok.encode("a café")


def test_char_empty_text_is_an_error() -> None:
    with pytest.raises(DlmError, match="empty"):
        CharTokenizer.from_text("")


@pytest.mark.parametrize("content", [
    "",                                        # empty file
    '{"dlm_tokenizer": "char", "chars": "ab',  # truncated
    '{"dlm_tokenizer": "char"}',               # valid JSON, missing its characters
    '{"dlm_tokenizer": "char", "chars": 5}',   # wrong type
    "[1, 2, 3]",                               # not an object
    '{"model": "nothing like a tokenizer"}',   # not a Hugging Face tokenizer either
])
def test_corrupted_file_is_dlm_error(content: str, tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DlmError, match="tokenizer file"):
        load_tokenizer(path)


def test_truncated_bpe_file_is_dlm_error(bpe: BPETokenizer, tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    text = bpe.to_json()
    path.write_text(text[: len(text) // 2], encoding="utf-8")
    with pytest.raises(DlmError, match=r"tokenizer file .*(not valid JSON|not a valid tokenizer).*training again"):
        load_tokenizer(path)


def test_missing_file_is_dlm_error(tmp_path: Path) -> None:
    with pytest.raises(DlmError, match="not found"):
        load_tokenizer(tmp_path / "nope.json")


def test_bpe_vocab_too_small() -> None:
    with pytest.raises(DlmError, match="too small"):
        BPETokenizer.train(["some text"], vocab_size=100)
