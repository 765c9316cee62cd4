"""Noise schedules α(t), their derivatives, the masking process and the noise-level sampler."""

from __future__ import annotations

import math

import pytest
import torch

from dlm.diffusion.process import mask_tokens, sample_t
from dlm.diffusion.schedules import SCHEDULES, get_schedule

# Documented boundary values (α(0), α(1)); schedules not listed have α(0) = 1 and α(1) = 0.
SIGMOID_0 = 1 / (1 + math.exp(-5.0))  # ≈ 0.9933
BOUNDARIES = {
    "loglinear": (1.0, 1e-3),
    "clipped-cosine": (0.95, 0.05),
    "sigmoid": (SIGMOID_0, 1 - SIGMOID_0),
}


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_boundaries(name: str) -> None:
    sched = get_schedule(name)
    alpha_0, alpha_1 = sched.alpha(torch.tensor([0.0, 1.0], dtype=torch.float64)).tolist()
    want_0, want_1 = BOUNDARIES.get(name, (1.0, 0.0))
    assert alpha_0 == pytest.approx(want_0, abs=1e-9)
    assert alpha_1 == pytest.approx(want_1, abs=1e-9)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_alpha_strictly_decreasing_in_unit_interval(name: str) -> None:
    sched = get_schedule(name)
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    alpha = sched.alpha(t)
    assert (alpha.diff() < 0).all()
    assert ((alpha >= 0) & (alpha <= 1)).all()


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_alpha_prime_matches_finite_differences(name: str) -> None:
    sched = get_schedule(name)
    t = torch.linspace(0.01, 0.99, 197, dtype=torch.float64)
    h = 1e-6
    numeric = (sched.alpha(t + h) - sched.alpha(t - h)) / (2 * h)
    torch.testing.assert_close(sched.alpha_prime(t), numeric, rtol=1e-6, atol=1e-8)
    assert (sched.alpha_prime(t) < 0).all()


def test_unknown_schedule() -> None:
    with pytest.raises(ValueError, match="unknown schedule"):
        get_schedule("nope")


@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("t_value", [0.1, 0.5, 0.9])
def test_masking_rate_is_one_minus_alpha(name: str, t_value: float) -> None:
    sched = get_schedule(name)
    B, L, mask_id = 200, 1000, 7  # 200k tokens
    x = torch.randint(0, 7, (B, L), generator=torch.Generator().manual_seed(0))
    t = torch.full((B,), t_value)
    z, masked = mask_tokens(x, t, sched, mask_id, generator=torch.Generator().manual_seed(1))
    # z is x with exactly the masked positions replaced by [MASK].
    assert torch.equal(z == mask_id, masked)
    assert torch.equal(z[~masked], x[~masked])
    p = 1 - float(sched.alpha(torch.tensor(t_value, dtype=torch.float64)))
    se = math.sqrt(p * (1 - p) / masked.numel())
    assert abs(masked.float().mean().item() - p) < 4 * se


def test_keep_positions_are_never_masked() -> None:
    x = torch.zeros(64, 32, dtype=torch.long)
    keep = torch.zeros_like(x, dtype=torch.bool)
    keep[:, :5] = True
    z, masked = mask_tokens(x, torch.full((64,), 0.999), get_schedule("linear"), 9, keep=keep)
    assert not masked[:, :5].any() and (z[:, :5] == 0).all()
    assert masked[:, 5:].float().mean() > 0.95


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_antithetic_t_is_stratified(batch: int) -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        t = sample_t(batch, generator=gen, antithetic=True)
        assert t.shape == (batch,)
        assert ((t >= 0) & (t < 1)).all()
        # Sorted, the k-th value lies in the k-th bin [k/B, (k+1)/B): one value per bin.
        bins = torch.floor(t.sort().values.double() * batch).long()
        assert torch.equal(bins, torch.arange(batch))


@pytest.mark.parametrize("antithetic", [True, False])
def test_sample_t_marginally_uniform(antithetic: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    # One entry per batch, so draws are independent; the batch is shuffled, so entry 0 is any stratum.
    draws = torch.stack([sample_t(8, generator=gen, antithetic=antithetic)[0] for _ in range(5000)])
    counts = torch.histc(draws, bins=10, min=0.0, max=1.0)
    expected = len(draws) / 10
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 27.88  # 0.999 quantile of chi-square with 9 degrees of freedom
    assert abs(draws.mean().item() - 0.5) < 4 * math.sqrt(1 / 12 / len(draws))
