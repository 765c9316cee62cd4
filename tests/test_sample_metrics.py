"""Sample-quality measures on hand-made inputs, and the NLL a causal judge gives its own samples."""

from __future__ import annotations

import math

import pytest
import torch

from dlm.eval.judges import causal_nll_sum, judge_features
from dlm.eval.sample_metrics import distinct_n, mean_unigram_entropy, sample_quality, unigram_entropy


def test_unigram_entropy_of_hand_made_samples():
    assert unigram_entropy([7, 7, 7, 7]) == 0.0
    assert unigram_entropy([1, 2, 3, 4]) == pytest.approx(math.log(4))
    assert unigram_entropy([1, 1, 2, 2]) == pytest.approx(math.log(2))
    assert mean_unigram_entropy([[7, 7], [1, 2]]) == pytest.approx(math.log(2) / 2)


def test_distinct_n_counts_repeats():
    assert distinct_n([[1, 2, 3, 4]], 1) == 1.0
    assert distinct_n([[1, 1, 1, 1]], 1) == 0.25
    assert distinct_n([[1, 2, 1, 2, 1]], 2) == pytest.approx(2 / 4)  # (1,2) (2,1) (1,2) (2,1)
    assert distinct_n([[1, 2], [1, 2]], 2) == 0.5  # pooled across samples


class UnigramJudge(torch.nn.Module):
    """A 'causal LM' that ignores its input and predicts fixed token probabilities."""

    def __init__(self, probs: torch.Tensor):
        super().__init__()
        self.log_probs = probs.log()

    def forward(self, idx, t=None, cache=None):
        return self.log_probs.expand(*idx.shape, -1).clone()


def test_gen_ppl_of_the_judges_own_samples_matches_its_entropy():
    # Samples drawn from the judge's own distribution have expected NLL = its entropy (in nats).
    probs = torch.tensor([0.5, 0.25, 0.125, 0.125, 0.0])  # id 4 plays [BOS]; never sampled
    entropy = -(probs[:4] * probs[:4].log()).sum().item()  # 1.2130 nats
    samples = torch.multinomial(probs, 64 * 128, replacement=True, generator=torch.Generator().manual_seed(0))
    total, count = causal_nll_sum(UnigramJudge(probs), samples.view(64, 128), bos_id=4)
    assert count == 64 * 128
    assert total / count == pytest.approx(entropy, abs=0.02)
    assert math.exp(total / count) == pytest.approx(math.exp(entropy), rel=0.03)


def test_low_gen_ppl_from_repetition_shows_as_low_entropy():
    probs = torch.tensor([0.97, 0.01, 0.01, 0.01, 0.0])
    repetitive = torch.zeros(8, 32, dtype=torch.long)  # the judge's favourite token, over and over
    total, count = causal_nll_sum(UnigramJudge(probs), repetitive, bos_id=4)
    quality = sample_quality(repetitive)
    assert math.exp(total / count) < 1.05 and quality["unigram_entropy"] == 0.0 and quality["distinct_1"] < 0.01


def test_bleu_and_self_bleu_on_hand_made_samples():
    from dlm.eval.sample_metrics import bleu, self_bleu

    sentence = [1, 2, 3, 4, 5, 6, 7, 8]
    assert bleu(sentence, [sentence]) == pytest.approx(1.0)
    assert bleu([9, 10, 11, 12, 13, 14, 15, 16], [sentence]) == 0.0  # no unigram in common
    half = bleu([1, 2, 3, 4, 13, 14, 15, 16], [sentence])
    assert 0.1 < half < 0.9
    assert bleu(sentence[:4], [sentence]) < bleu(sentence, [sentence])  # brevity penalty
    assert self_bleu([sentence, sentence, sentence]) == pytest.approx(1.0)
    assert self_bleu([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]) == 0.0


def test_judge_features_of_samples_as_long_as_the_context() -> None:
    from dlm.model import ModelConfig, Transformer

    judge = Transformer(ModelConfig(vocab_size=10, n_layer=1, n_head=2, d_model=16, block_size=8, causal=True))
    features = judge_features(judge, torch.randint(0, 6, (3, 8)), bos_id=8)  # 8 tokens + [BOS] > 8
    assert features.shape == (3, 16) and torch.isfinite(features).all()
