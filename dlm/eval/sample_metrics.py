"""Sample-quality measures that need no judge: unigram entropy, distinct-n, self-BLEU.

Generative perplexity (dlm.eval.judges) alone rewards repetition (a sample of one repeated word
scores very well), so it is always reported beside these: low gen-PPL with low entropy is
collapse, not quality.

All functions take token ids (samplers' outputs), never text.
"""

from __future__ import annotations

import math
from collections import Counter

import torch


def unigram_entropy(ids: list[int]) -> float:
    """Entropy (nats) of the token frequencies within one sample."""
    if not ids:
        return 0.0
    counts = Counter(ids)
    total = len(ids)
    return -sum(c / total * math.log(c / total) for c in counts.values())


def mean_unigram_entropy(samples: list[list[int]]) -> float:
    """Per-sample unigram entropy, averaged over samples (the convention of MDLM/ReMDM reports)."""
    return sum(unigram_entropy(s) for s in samples) / len(samples)


def distinct_n(samples: list[list[int]], n: int) -> float:
    """Distinct n-grams over all n-grams, pooled across samples (1.0 = no n-gram repeats)."""
    grams = [tuple(s[i:i + n]) for s in samples for i in range(len(s) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def _ngram_counts(ids: list[int], n: int) -> Counter:
    return Counter(tuple(ids[i:i + n]) for i in range(len(ids) - n + 1))


def bleu(hypothesis: list[int], references: list[list[int]], max_n: int = 4) -> float:
    """Corpus-style BLEU of one hypothesis against references: geometric mean of clipped n-gram
    precisions (n ≤ max_n, add-one smoothing for n > 1 so short texts do not score 0) times the
    brevity penalty against the closest reference length."""
    if not hypothesis:
        return 0.0
    log_precision = 0.0
    for n in range(1, max_n + 1):
        hyp = _ngram_counts(hypothesis, n)
        max_ref: Counter = Counter()
        for ref in references:
            max_ref |= _ngram_counts(ref, n)
        matched = sum(min(count, max_ref[gram]) for gram, count in hyp.items())
        total = sum(hyp.values())
        smooth = 0 if n == 1 else 1
        if matched + smooth == 0 or total + smooth == 0:
            return 0.0
        log_precision += math.log((matched + smooth) / (total + smooth)) / max_n
    closest = min((abs(len(r) - len(hypothesis)), len(r)) for r in references)[1]
    brevity = 1.0 if len(hypothesis) >= closest else math.exp(1 - closest / len(hypothesis))
    return brevity * math.exp(log_precision)


def self_bleu(samples: list[list[int]], max_samples: int = 100) -> float:
    """Mean BLEU-4 of each sample against all the others (1 = every sample alike; lower = diverse)."""
    samples = samples[:max_samples]
    if len(samples) < 2:
        return 0.0
    return sum(bleu(s, samples[:i] + samples[i + 1:]) for i, s in enumerate(samples)) / len(samples)


def sample_quality(samples: torch.Tensor) -> dict:
    """Every judge-free measure for (N, L) sample ids (gen-PPL: dlm.eval.judges)."""
    rows = samples.tolist()
    return {"samples": len(rows), "length": samples.shape[1], "unigram_entropy": mean_unigram_entropy(rows),
            **{f"distinct_{n}": distinct_n(rows, n) for n in (1, 2, 3, 4)}, "self_bleu": self_bleu(rows)}
