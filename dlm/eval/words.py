"""The real-word rate: the share of a text's words that occur in a word list.

A reader sees misspelt words at once ("Son wn is sonlord is isar to bealdy drous"), while a
judge model's likelihood or a MAUVE score may not; this figure sees exactly that and nothing more.
It is blind to nonsense made of real words (dlm.eval.damage.replace_words shows it), so it is
reported beside the other figures, never alone.

Words (one rule, used for the word list and for the texts scored, so the two always agree):

- a word is a maximal run of letters (str.isalpha; combining accents U+0300–U+036F stay with
  their letter) in which single apostrophes (' or ’) may join letters: "o'er", "thou'rt";
- apostrophes at either end are not part of the word, since they cannot be told from quotation
  marks: "'tis" → "tis", "mistress'" → "mistress" (the word list is built the same way);
- everything else separates words: digits ("3rd" → "rd"), hyphens and dashes ("well-met" →
  "well", "met"), underscores, punctuation, spaces;
- words are lowercased and ’ is written ' ("O’er" → "o'er").

The default word list in dlm is the vocabulary of the run's training split, so held-out real
text scores slightly below 1 (its rare words are missing from the list): that held-out figure is
printed beside samples' rates for scale.

Non-goals: spelling suggestions, stemming, Unicode normalization (text is taken as written).
"""

from __future__ import annotations

import math
import re
import statistics
import unicodedata
from collections import Counter
from collections.abc import Iterable, Set
from pathlib import Path

from dlm.errors import DlmError

APOSTROPHES = "'’"
# \w minus digits and "_" is nearly str.isalpha; the rare match it admits that isalpha does not
# ("x²", "½") is split again by _letter_pieces, so the fast regex path and the rule agree.
_LETTER = r"[^\W\d_][\u0300-\u036f]*"
_WORD = re.compile(rf"(?:{_LETTER})+(?:[{APOSTROPHES}](?:{_LETTER})+)*")


def _is_letter(char: str) -> bool:
    return char.isalpha() or unicodedata.category(char).startswith("M")


def _letter_pieces(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Spans of text[start:end] split at its non-letters (slow path for rare characters)."""
    pieces, piece_start = [], start
    for i in range(start, end + 1):
        if i == end or not (_is_letter(text[i]) or text[i] in APOSTROPHES):
            a, b = piece_start, i
            while a < b and not _is_letter(text[a]):  # outer apostrophes and stray marks
                a += 1
            while b > a and text[b - 1] in APOSTROPHES:
                b -= 1
            if a < b:
                pieces.append((a, b))
            piece_start = i + 1
    return pieces


def word_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character offsets of every word of `text`, in order (rule in the module doc)."""
    spans = []
    for match in _WORD.finditer(text):
        core = match.group()
        for apostrophe in APOSTROPHES:
            core = core.replace(apostrophe, "")
        if core.isalpha():
            spans.append(match.span())
        else:  # a combining accent (fine) or a numeric character such as "²" (not a letter)
            spans.extend(_letter_pieces(text, *match.span()))
    return spans


def normalize_word(raw: str) -> str:
    """The form words are compared in: lowercase, with ’ written '."""
    return raw.lower().replace("’", "'")


def words_of(text: str) -> list[str]:
    """The words of `text`, normalized: "O'er the hill, 'tis thou-- ROMEO: 42" → o'er the hill tis thou romeo."""
    return [normalize_word(text[start:end]) for start, end in word_spans(text)]


def word_list_from_text(text: str, min_count: int = 1) -> frozenset[str]:
    """The words occurring at least `min_count` times in `text` (e.g. the training split)."""
    counts = Counter(words_of(text))
    return frozenset(word for word, count in counts.items() if count >= min_count)


def load_word_list(path: str | Path) -> frozenset[str]:
    """A user's word list: the file is read as UTF-8 text and its words are taken by the rule
    above, so one word per line and any running text both work."""
    path = Path(path)
    if not path.is_file():
        raise DlmError(f"word list {path} is not a file: pass a UTF-8 text file of words (one per line, or any text)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DlmError(f"word list {path} is not UTF-8 text ({error.reason}): save it as UTF-8") from None
    words = word_list_from_text(text)
    if not words:
        raise DlmError(f"word list {path} holds no words: fill it with words (one per line, or any text)")
    return words


def count_real_words(text: str, words: Set[str]) -> tuple[int, int]:
    """(words of `text` found in `words`, words of `text`)."""
    found = words_of(text)
    return sum(word in words for word in found), len(found)


def real_word_rate(texts: Iterable[str], words: Set[str]) -> dict:
    """The real-word rate of `texts` against the word list `words` (normalized words, as made by
    word_list_from_text or load_word_list).

    Returns a JSON-ready dict:
      real_word_rate      real words / words, pooled over all texts (None when no text has a word)
      mean_per_text       the mean of the per-text rates (None when no text has a word)
      stderr              standard error of that mean: per-text rates' sample std / sqrt(n);
                          None for fewer than two texts with words
      n_words             words scored, over all texts
      n_texts             texts scored (those with at least one word)
      n_texts_without_words  texts with no word at all (empty, or only digits/punctuation)

    A text without words has no rate (0 real words of 0): it is left out of the mean and the
    standard error, and counted in n_texts_without_words so that it is seen; the pooled rate is
    unaffected by it either way. Such texts are for other figures to judge: they hold no word to
    misspell.
    """
    real_total, word_total, rates, without_words = 0, 0, [], 0
    for text in texts:
        real, total = count_real_words(text, words)
        real_total, word_total = real_total + real, word_total + total
        if total:
            rates.append(real / total)
        else:
            without_words += 1
    return {
        "real_word_rate": real_total / word_total if word_total else None,
        "mean_per_text": sum(rates) / len(rates) if rates else None,
        "stderr": statistics.stdev(rates) / math.sqrt(len(rates)) if len(rates) > 1 else None,
        "n_words": word_total,
        "n_texts": len(rates),
        "n_texts_without_words": without_words,
    }
