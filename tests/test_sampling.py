"""Samplers: categorical draws, filtering, the two diffusion samplers and AR decoding."""

from __future__ import annotations

import pytest
import torch

from dlm.diffusion.loss import ar_loss, mdlm_loss
from dlm.diffusion.schedules import Linear
from dlm.model import ModelConfig, Transformer
from dlm.sampling import DIFFUSION_SAMPLERS, ar_generate, diffusion_generate
from dlm.sampling.base import filter_logits, sample_categorical

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


# --- diffusion and AR generation with an untrained model: the contract, not the quality ---

VOCAB = 12  # real tokens 0..11, then [MASK] [PAD] [BOS] [EOS]
MASK, BOS = VOCAB, VOCAB + 2


def tiny_model(causal: bool, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=VOCAB + 4, n_layer=2, n_head=2, d_model=64, block_size=16, causal=causal)
    return Transformer(cfg)


@pytest.mark.parametrize("sampler", DIFFUSION_SAMPLERS)
@pytest.mark.parametrize("steps", [1, 3, 10])
def test_diffusion_generate_contract(sampler: str, steps: int) -> None:
    model = tiny_model(causal=False).eval()
    prompt = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    length = 10

    def run(seed: int) -> torch.Tensor:
        return diffusion_generate(model, prompt, length, steps, MASK, sampler,
                                  generator=torch.Generator().manual_seed(seed))

    out = run(0)
    assert out.shape == (2, 4 + length)
    assert torch.equal(out[:, :4], prompt)
    assert not (out == MASK).any()
    assert ((out >= 0) & (out < VOCAB + 4)).all()
    assert torch.equal(run(0), out)
    assert not torch.equal(run(1), out)


@pytest.mark.parametrize("sampler", DIFFUSION_SAMPLERS)
def test_diffusion_generate_without_prompt(sampler: str) -> None:
    model = tiny_model(causal=False).eval()
    out = diffusion_generate(model, torch.zeros(3, 0, dtype=torch.long), 16, 4, MASK, sampler,
                             generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 16) and not (out == MASK).any()


def test_diffusion_generate_rejects_bad_arguments() -> None:
    model = tiny_model(causal=False).eval()
    prompt = torch.zeros(1, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="sampler"):
        diffusion_generate(model, prompt, 4, 4, MASK, "nope")
    with pytest.raises(ValueError, match="at least 1"):
        diffusion_generate(model, prompt, 4, 0, MASK)


def test_ar_generate_contract() -> None:
    model = tiny_model(causal=True).eval()
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])

    def run(seed: int) -> torch.Tensor:
        return ar_generate(model, prompt, 8, BOS, generator=torch.Generator().manual_seed(seed))

    out = run(0)
    assert out.shape == (2, 11)
    assert torch.equal(out[:, :3], prompt)
    assert torch.equal(run(0), out)
    assert not torch.equal(run(1), out)


def test_ar_greedy_equals_argmax_of_full_forward() -> None:
    # Greedy decoding with the KV cache picks, at each step, the argmax of a full causal forward.
    model = tiny_model(causal=True).eval()
    prompt = torch.tensor([[3, 1, 4]])
    out = ar_generate(model, prompt, 6, BOS, temperature=0.0)
    with torch.no_grad():
        logits = model(torch.cat((torch.tensor([[BOS]]), out[:, :-1]), dim=1))
    assert torch.equal(logits[0, 3:].argmax(-1), out[0, 3:])


# --- memorisation: a trained model reproduces its one training sequence greedily ---

# A permutation: every token occurs once, so any visible token tells the model where it is.
SEQUENCE = torch.randperm(VOCAB, generator=torch.Generator().manual_seed(0))


def memorise(causal: bool, steps: int) -> Transformer:
    model = tiny_model(causal, seed=1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    noise = torch.Generator().manual_seed(0)
    x = SEQUENCE.repeat(32, 1)
    for _ in range(steps):
        out = ar_loss(model, x, BOS) if causal else mdlm_loss(model, x, Linear(), MASK, VOCAB, generator=noise)
        opt.zero_grad()
        (out.nll_sum / out.n_tokens).backward()
        opt.step()
    return model.eval()


def test_diffusion_model_memorises_a_sequence() -> None:
    model = memorise(causal=False, steps=300)
    # From [first token | MASK × 11]: the prompt is the model's only position reference (RoPE is
    # relative, so an all-[MASK] canvas looks the same at every position; see test_model).
    prompt, length = SEQUENCE[None, :1], len(SEQUENCE) - 1
    out = diffusion_generate(model, prompt, length, length, MASK, "confidence", temperature=0.0)
    assert out[0].tolist() == SEQUENCE.tolist()
    # Fewer steps than tokens (several committed per step) still recovers it.
    out = diffusion_generate(model, prompt, length, 4, MASK, "confidence", temperature=0.0)
    assert out[0].tolist() == SEQUENCE.tolist()


def test_ar_model_memorises_a_sequence() -> None:
    model = memorise(causal=True, steps=150)
    out = ar_generate(model, torch.zeros(1, 0, dtype=torch.long), len(SEQUENCE), BOS, temperature=0.0)
    assert out[0].tolist() == SEQUENCE.tolist()
