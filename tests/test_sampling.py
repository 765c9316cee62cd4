"""Categorical draws and logit filtering (the samplers themselves: test_samplers.py)."""

from __future__ import annotations

import math

import pytest
import torch

from dlm.sampling.base import SpecialIds, apply_repetition_penalty, filter_logits, sample_categorical

PROBS = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)


def chi_square(ids: torch.Tensor, probs: torch.Tensor) -> float:
    counts = torch.bincount(ids, minlength=len(probs)).double()
    expected = probs * len(ids)
    return float(((counts - expected) ** 2 / expected).sum())


def test_sample_categorical_matches_target() -> None:
    n = 20_000
    logits = PROBS.log().expand(n, -1)
    ids, log_p = sample_categorical(logits, generator=torch.Generator().manual_seed(0))
    assert chi_square(ids, PROBS) < 16.27  # 0.999 quantile of chi-square with 3 degrees of freedom
    torch.testing.assert_close(log_p, PROBS.log()[ids])


def test_temperature_sharpens_and_flattens() -> None:
    n = 20_000
    logits = PROBS.log().expand(n, -1)
    for temperature in (0.5, 2.0):
        target = (PROBS.log() / temperature).softmax(-1)
        ids, _ = sample_categorical(logits, temperature, generator=torch.Generator().manual_seed(1))
        assert chi_square(ids, target) < 16.27


def test_temperature_zero_is_argmax() -> None:
    logits = torch.randn(50, 9, generator=torch.Generator().manual_seed(0))
    ids, log_p = sample_categorical(logits, temperature=0.0)
    assert torch.equal(ids, logits.argmax(-1))
    assert (log_p == 0).all()


def test_top_k_keeps_the_k_largest() -> None:
    logits = PROBS.log()
    kept = torch.isfinite(filter_logits(logits, top_k=2))
    assert kept.tolist() == [True, True, False, False]
    ids, _ = sample_categorical(logits.expand(5000, -1), top_k=2, generator=torch.Generator().manual_seed(2))
    assert set(ids.tolist()) == {0, 1}
    # Renormalised over the survivors: 0.5/0.8 and 0.3/0.8.
    assert chi_square(ids, torch.tensor([0.625, 0.375, 1e-12, 1e-12], dtype=torch.float64)) < 16.27


@pytest.mark.parametrize(("top_p", "survivors"), [(0.5, [0]), (0.6, [0, 1]), (0.75, [0, 1]),
                                                   (0.9, [0, 1, 2]), (1.0, [0, 1, 2, 3])])
def test_top_p_keeps_the_nucleus(top_p: float, survivors: list[int]) -> None:
    # The smallest set of most likely tokens whose mass reaches top_p.
    shuffled = torch.tensor([2, 0, 3, 1])  # order in the vocabulary must not matter
    logits = PROBS.log()[shuffled]
    kept = torch.isfinite(filter_logits(logits, top_p=top_p))
    assert sorted(shuffled[kept].tolist()) == survivors
    ids, _ = sample_categorical(logits.expand(2000, -1), top_p=top_p, generator=torch.Generator().manual_seed(3))
    assert set(shuffled[ids].tolist()) == set(survivors)


def test_gumbel_noise_is_float64_all_the_way() -> None:
    # Float32 uniforms cap −log(−log u) at ≈ 16.6, so a token of probability 1e-9 would never be
    # drawn at temperature 1 (a silently lower temperature). Noise computed in float32 and then
    # cast is exactly representable in float32; genuinely float64 noise almost never is.
    from dlm.sampling.base import gumbel_noise

    noise = gumbel_noise(torch.Size([200_000]), torch.Generator().manual_seed(0), torch.device("cpu"))
    assert noise.dtype == torch.float64
    assert (noise != noise.float().double()).float().mean() > 0.99
    # The tail follows the Gumbel law: P(G > x) = 1 − exp(−e^{−x}), within 5 binomial standard errors.
    for x in (4.0, 8.0, 10.0):
        p = 1 - math.exp(-math.exp(-x))
        count = int((noise > x).sum())
        assert abs(count - p * len(noise)) < 5 * math.sqrt(p * len(noise)) + 1


def test_repetition_penalty_arithmetic_and_specials() -> None:
    special = SpecialIds(mask=4, pad=5, bos=6, eos=7)
    logits = torch.tensor([[[2.0, -2.0, 1.0, 0.5, 3.0, 3.0, 3.0, 3.0]]])
    tokens = torch.tensor([[0, 1, 4, 7]])  # 0 and 1 visible, a [MASK], an [EOS]
    visible = torch.tensor([[True, True, False, True]])
    out = apply_repetition_penalty(logits, tokens, visible, 2.0, special)
    assert out[0, 0].tolist() == [1.0, -4.0, 1.0, 0.5, 3.0, 3.0, 3.0, 3.0]  # specials never penalised


def test_sampling_runs_in_fp32_on_a_cpu_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """`auto` is fp32 on a CPU even with bf16 units (faster one sample at a time); training's auto is unchanged."""
    from dlm.runtime import pick_dtype, pick_inference_dtype

    monkeypatch.setattr("dlm.runtime.cpu_has_bf16", lambda: True)
    cpu = torch.device("cpu")
    assert pick_inference_dtype("auto", cpu) == torch.float32 and pick_dtype("auto", cpu) == torch.bfloat16
    assert pick_inference_dtype("bf16", cpu) == torch.bfloat16 and pick_inference_dtype("fp32", cpu) == torch.float32


def test_a_loaded_run_samples_in_fp32_on_a_cpu(tiny_twins, monkeypatch: pytest.MonkeyPatch) -> None:
    from dlm.inference import load

    monkeypatch.setattr("dlm.runtime.cpu_has_bf16", lambda: True)
    assert load(tiny_twins["ar"], device="cpu").dtype == torch.float32
    assert load(tiny_twins["ar"], device="cpu", dtype="bf16").dtype == torch.bfloat16
