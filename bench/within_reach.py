"""The "within reach of the AR twin" rule every sample-quality bench applies (one copy of it).

A diffusion row is within reach when its real-word rate is at most REAL_WORD_POINTS below the
twin's, its whole-text MAUVE at least MAUVE_RATIO of the twin's, its unigram entropy within
ENTROPY_FRACTION of the twin's and (unless a bench leaves diversity out: ar_vs_diffusion.py,
whose rows have no self-BLEU) its self-BLEU within SELF_BLEU_FRACTION of the twin's.
"""

from __future__ import annotations

REAL_WORD_POINTS = 3.0  # at most this many percentage points below the twin's real-word rate
MAUVE_RATIO = 0.9  # whole-text MAUVE at least this fraction of the twin's
ENTROPY_FRACTION = 0.05  # unigram entropy within this fraction of the twin's, either way
SELF_BLEU_FRACTION = 0.10  # self-BLEU within this fraction of the twin's, either way


def rule(self_bleu: bool = True) -> str:
    """The rule in words, for a report."""
    text = (f"its real-word rate is at most {REAL_WORD_POINTS:g} points below the AR twin's, its whole-text MAUVE "
            f"at least {MAUVE_RATIO:g}× the twin's")
    if not self_bleu:
        return text + f" and its unigram entropy within {ENTROPY_FRACTION * 100:g} % of the twin's"
    return text + (f", its unigram entropy within {ENTROPY_FRACTION * 100:g} % and its self-BLEU within "
                   f"{SELF_BLEU_FRACTION * 100:g} % of the twin's")


RULE = rule()


def at_most(value: float, limit: float) -> bool:
    """value ≤ limit, up to float rounding (a rate 3 points below passes though 100 × (0.90 − 0.87) > 3)."""
    return value <= limit + 1e-9


def entropy_close(row: dict, ar: dict, fraction: float = ENTROPY_FRACTION) -> bool:
    return at_most(abs(row["unigram_entropy"] - ar["unigram_entropy"]), fraction * ar["unigram_entropy"])


def shortfalls(row: dict, ar: dict, self_bleu: bool = True) -> list[str] | None:
    """The conditions of the rule that `row` misses against the AR twin's row `ar` ([]: within
    reach); None when a figure the rule needs is missing from either (a report written before rows
    had a real-word rate and whole-text MAUVE)."""
    if not all("real_word_rate" in r and r.get("mauve_features") == "encoder" for r in (row, ar)) or \
            ar["real_word_rate"] is None:
        return None
    missed = []
    if row["real_word_rate"] is None or not at_most(100 * (ar["real_word_rate"] - row["real_word_rate"]),
                                                    REAL_WORD_POINTS):
        missed.append("real words")
    if not at_most(MAUVE_RATIO * ar["mauve"], row["mauve"]):
        missed.append("MAUVE")
    if not entropy_close(row, ar):
        missed.append("entropy")
    if self_bleu and not at_most(abs(row["self_bleu"] - ar["self_bleu"]), SELF_BLEU_FRACTION * ar["self_bleu"]):
        missed.append("self-BLEU")
    return missed
