"""The real-word rate: its word rule, its arithmetic on texts with known answers, user word lists."""

from __future__ import annotations

import math

import pytest

from dlm.errors import DlmError
from dlm.eval.words import load_word_list, real_word_rate, word_list_from_text, word_spans, words_of


@pytest.mark.parametrize(("text", "expected"), [
    ("O'er the hill, 'tis thou-- ROMEO: 42 cats", ["o'er", "the", "hill", "tis", "thou", "romeo", "cats"]),
    ("O’er thou'rt mistress' 'quoted' don''t", ["o'er", "thou'rt", "mistress", "quoted", "don", "t"]),
    ("well-met, 3rd x² under_score", ["well", "met", "rd", "x", "under", "score"]),
    ("Café NAÏVE über cafe\u0301", ["café", "naïve", "über", "cafe\u0301"]),
    ("42 -- !? ' ''", []),
    ("", []),
])
def test_the_word_rule(text: str, expected: list[str]) -> None:
    assert words_of(text) == expected


def test_spans_point_at_the_words_in_the_original_text() -> None:
    text = "KING: 'Tis x² o'er!"
    assert [text[s:e] for s, e in word_spans(text)] == ["KING", "Tis", "x", "o'er"]


def test_word_list_from_text_and_min_count() -> None:
    text = "the cat and the dog, The END"
    assert word_list_from_text(text) == {"the", "cat", "and", "dog", "end"}
    assert word_list_from_text(text, min_count=2) == {"the"}


def test_rates_on_texts_with_known_answers() -> None:
    words = frozenset({"the", "cat", "sat", "on", "mat"})
    texts = ["The cat sat on the mat.", "the cta sat", "xq zz", "", "42 !!"]
    result = real_word_rate(texts, words)
    rates = [1.0, 2 / 3, 0.0]  # the last two texts have no words: no rate
    assert result["n_words"] == 6 + 3 + 2
    assert result["real_word_rate"] == pytest.approx(8 / 11)
    assert result["mean_per_text"] == pytest.approx(sum(rates) / 3)
    mean = sum(rates) / 3
    std = math.sqrt(sum((r - mean) ** 2 for r in rates) / 2)
    assert result["stderr"] == pytest.approx(std / math.sqrt(3))
    assert (result["n_texts"], result["n_texts_without_words"]) == (3, 2)


def test_one_text_has_no_stderr_and_no_words_has_no_rate() -> None:
    one = real_word_rate(["the cat"], {"the"})
    assert (one["real_word_rate"], one["mean_per_text"], one["stderr"]) == (0.5, 0.5, None)
    none = real_word_rate(["", "12"], {"the"})
    assert (none["real_word_rate"], none["mean_per_text"], none["stderr"], none["n_texts"]) == (None, None, None, 0)


def test_a_user_word_list_file(tmp_path) -> None:
    one_per_line = tmp_path / "words.txt"
    one_per_line.write_text("Apple\nbanana\n\norange's\n", encoding="utf-8")
    assert load_word_list(one_per_line) == {"apple", "banana", "orange's"}
    prose = tmp_path / "prose.txt"
    prose.write_text("An apple, a pear -- 3 figs.", encoding="utf-8")
    assert load_word_list(prose) == {"an", "apple", "a", "pear", "figs"}


@pytest.mark.parametrize(("content", "message"), [
    (None, "is not a file"),
    ("", "holds no words"),
    ("123 -- !!\n", "holds no words"),
    (b"\xff\xfe\xfa", "is not UTF-8"),
])
def test_bad_word_list_files_say_how_to_fix_them(tmp_path, content, message) -> None:
    path = tmp_path / "words.txt"
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(DlmError, match=message) as error:
        load_word_list(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)
