"""Sample-quality measures: generative perplexity under a judge, unigram entropy, distinct-n, self-BLEU.

Generative perplexity alone rewards repetition (a sample of one repeated word scores very well),
so it is always reported beside the unigram entropy of the samples: low gen-PPL with low entropy
is collapse, not quality.

All functions take token ids (samplers' outputs), never text.
"""

from __future__ import annotations

import math
from collections import Counter

import torch

from dlm.diffusion.loss import ar_loss


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


@torch.no_grad()
def causal_nll_sum(judge: torch.nn.Module, samples: torch.Tensor, bos_id: int,
                   batch_size: int = 32) -> tuple[float, int]:
    """Summed NLL (nats) of `samples` (N, L) under a causal `judge`, each scored from [BOS], and the
    number of tokens scored."""
    judge.eval()
    total, count = 0.0, 0
    for i in range(0, len(samples), batch_size):
        out = ar_loss(judge, samples[i:i + batch_size], bos_id)
        total += float(out.nll_sum)
        count += out.n_tokens
    return total, count


def generative_perplexity(judge: torch.nn.Module, samples: torch.Tensor, bos_id: int,
                          batch_size: int = 32) -> dict:
    """exp(mean NLL per token) of `samples` (N, L) under a causal `judge`, each scored from [BOS].

    Returns the perplexity, the NLL in nats/token and the number of tokens scored.
    """
    total, count = causal_nll_sum(judge, samples, bos_id, batch_size)
    nll = total / count
    return {"gen_ppl": math.exp(nll), "judge_nll_per_token": nll, "tokens": count}


def sample_quality(samples: torch.Tensor, judge: torch.nn.Module | None = None, bos_id: int = 0) -> dict:
    """Every measure for (N, L) sample ids; gen-PPL only when a judge is given."""
    rows = samples.tolist()
    result = {"samples": len(rows), "length": samples.shape[1], "unigram_entropy": mean_unigram_entropy(rows),
              **{f"distinct_{n}": distinct_n(rows, n) for n in (1, 2, 3, 4)}, "self_bleu": self_bleu(rows)}
    if judge is not None:
        result.update(generative_perplexity(judge, samples, bos_id))
    return result


@torch.no_grad()
def judge_features(judge: torch.nn.Module, samples: torch.Tensor, bos_id: int, batch_size: int = 32) -> torch.Tensor:
    """(N, D) features for MAUVE: the causal judge's final hidden state at the last position,
    which has read the whole sequence (as MAUVE does with GPT-2)."""
    judge.eval()
    out = []
    for i in range(0, len(samples), batch_size):
        x = samples[i:i + batch_size]
        inputs = torch.cat((torch.full_like(x[:, :1], bos_id), x), dim=1)
        # A sample as long as the context leaves no room for [BOS]: drop it (the last position still
        # reads every token of the sample).
        inputs = inputs[:, -judge.cfg.block_size:] if hasattr(judge, "cfg") else inputs
        out.append(judge(inputs, return_hidden=True)[:, -1].float().cpu())
    return torch.cat(out)
