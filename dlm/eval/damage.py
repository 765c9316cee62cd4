"""Damaged copies of real text, for testing that a judge ranks damage below the real thing.

A sample figure that cannot tell real text from the same text with half its words misspelt is
not measuring what a reader sees. These functions make such text, reproducibly (seeded numpy
Generator), changing words only: every character outside a word (punctuation, digits, spaces,
line breaks) stays exactly where it was. Words are those of dlm.eval.words, so a judge counting
words counts the very units damaged here.

- shuffle_letters: a share of the words get their letters shuffled (misspelt text);
- replace_words: a share of the words become random words of a vocabulary (text made of real
  words that is nonsense, which the real-word rate alone cannot see).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from dlm.errors import DlmError
from dlm.eval.words import normalize_word, word_spans

_REDRAWS = 10  # a shuffle returns the word unchanged with probability ≤ 1/2; ten re-draws ~ never fail


def _check_share(share: float) -> None:
    if not 0.0 <= share <= 1.0:
        raise DlmError(f"share {share} is not a fraction: pass a number from 0 to 1")


def _movable(word: str, keep_ends: bool) -> list[int]:
    """Positions of the letters of `word` that a shuffle may move (apostrophes and accents stay)."""
    letters = [i for i, char in enumerate(word) if char.isalpha()]
    return letters[1:-1] if keep_ends else letters


def can_shuffle(word: str, keep_ends: bool = False) -> bool:
    """Whether shuffling can change `word` as read: its movable letters, lowercased, are not all one."""
    return len({word[i].lower() for i in _movable(word, keep_ends)}) > 1


def _shuffle_word(word: str, keep_ends: bool, rng: np.random.Generator) -> str:
    """`word` with its movable letters permuted; each position keeps its case ("Romeo" → "Oemro")."""
    positions = _movable(word, keep_ends)
    letters = [word[i].lower() for i in positions]
    for attempt in range(_REDRAWS + 1):
        if attempt < _REDRAWS:
            order = [letters[j] for j in rng.permutation(len(letters))]
        else:  # rotating by one changes any sequence that is not all one letter
            order = letters[1:] + letters[:1]
        if order != letters:
            break
    chars = list(word)
    for position, letter in zip(positions, order, strict=True):
        chars[position] = letter.upper() if word[position].isupper() else letter
    return "".join(chars)


def _replace_spans(text: str, spans: list[tuple[int, int]], new_words: list[str]) -> str:
    pieces, previous_end = [], 0
    for (start, end), new_word in zip(spans, new_words, strict=True):
        pieces += [text[previous_end:start], new_word]
        previous_end = end
    return "".join(pieces) + text[previous_end:]


def _chosen(n_candidates: int, share: float, rng: np.random.Generator) -> list[int]:
    """round(share · n) distinct candidate indices, drawn uniformly, in text order."""
    count = round(share * n_candidates)
    return sorted(rng.choice(n_candidates, size=count, replace=False).tolist())


def shuffle_letters(text: str, share: float, seed: int = 0, keep_ends: bool = False) -> str:
    """`text` with `share` of its shufflable words misspelt by shuffling their letters.

    keep_ends=False (default) shuffles all letters of a word, so every word except single letters
    and one-letter repeats ("a", "I", "oo") can change and `share` is nearly the share of all
    words. keep_ends=True is the classic "Cmabrigde" variant: first and last letter stay, so words
    of three letters or fewer never change (the share is then of the words that can).
    A chosen word always comes out different as read (lowercased); it may by chance be another
    real word ("saw" → "was"). Each letter position keeps its case; apostrophes and combining
    accents stay where they were; round(share · eligible) words change.
    """
    _check_share(share)
    rng = np.random.default_rng(seed)
    spans = [(s, e) for s, e in word_spans(text) if can_shuffle(text[s:e], keep_ends)]
    picked = [spans[i] for i in _chosen(len(spans), share, rng)]
    return _replace_spans(text, picked, [_shuffle_word(text[s:e], keep_ends, rng) for s, e in picked])


def _in_case_of(word: str, like: str) -> str:
    """`word` written in the case pattern of `like`: ROMEO → upper, Romeo → capitalized, else lower."""
    if len(like) > 1 and like.isupper():
        return word.upper()
    if like[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def replace_words(text: str, share: float, vocabulary: Iterable[str], seed: int = 0) -> str:
    """`text` with `share` of its words replaced by words drawn uniformly from `vocabulary` (never
    the word itself), each written in the case pattern of the word it replaces: every word stays
    real, the text becomes nonsense. The vocabulary is sorted first, so the output depends only on
    the seed (a frozenset's order changes with Python's hash seed)."""
    _check_share(share)
    choices = sorted({normalize_word(word) for word in vocabulary})
    if len(choices) < 2:
        raise DlmError(f"vocabulary holds {len(choices)} distinct word(s): pass at least two to draw from")
    rng = np.random.default_rng(seed)
    spans = word_spans(text)
    picked = [spans[i] for i in _chosen(len(spans), share, rng)]
    new_words = []
    for start, end in picked:
        old = normalize_word(text[start:end])
        new = old
        while new == old:  # at most a few draws: at least one other word exists
            new = choices[rng.integers(len(choices))]
        new_words.append(_in_case_of(new, text[start:end]))
    return _replace_spans(text, picked, new_words)
