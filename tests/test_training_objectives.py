"""Training weightings and entropy-weighted masking: each estimates its own objective without bias,
and the mask probabilities are what microDLM's formula says."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dlm.diffusion.process import entropy_mask_scale, mask_tokens
from dlm.diffusion.schedules import get_schedule
from dlm.objectives.mdlm import WEIGHT_CAP, mdlm_loss

V, L = 10, 32
MASK = V


class FixedLogProbs(torch.nn.Module):
    """The same distribution over the V real tokens at every position, whatever it sees."""

    def __init__(self, log_p: torch.Tensor):
        super().__init__()
        logits = torch.full((V + 4,), -1e9)
        logits[:V] = log_p
        self.register_buffer("logits", logits)

    def forward(self, idx, t=None):
        return self.logits.expand(*idx.shape, -1).clone()


# E over t ~ U[0, 1] of w(t)·(1 − α(t)) for the linear schedule (α = 1 − t): the expected loss per
# token is this times the cross-entropy of the data under the model.
EXPECTED_FACTOR = {
    "elbo": 1.0,  # ∫ (1/t)·t dt
    "flat": 0.5,  # ∫ t dt
    "clipped": (1 / WEIGHT_CAP) ** 2 * WEIGHT_CAP / 2 + (1 - 1 / WEIGHT_CAP),  # ∫ min(1/t, 5)·t dt
}


@pytest.mark.parametrize("weighting", ["elbo", "flat", "clipped"])
def test_each_weighting_estimates_its_own_objective_without_bias(weighting: str) -> None:
    gen = torch.Generator().manual_seed(0)
    p = torch.tensor([0.3, 0.2, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.03, 0.02])
    model = FixedLogProbs(p.log())
    x = torch.multinomial(p, 32 * L, replacement=True, generator=gen).view(32, L)
    cross_entropy = float(-p.log()[x].mean())
    schedule = get_schedule("linear")
    estimates = []
    with torch.no_grad():
        for _ in range(1500):
            out = mdlm_loss(model, x, schedule, MASK, V, generator=gen, weighting=weighting)
            estimates.append(out.nll_sum.item() / out.n_tokens)
    mean, se = np.mean(estimates), np.std(estimates, ddof=1) / math.sqrt(len(estimates))
    expected = EXPECTED_FACTOR[weighting] * cross_entropy
    assert abs(mean - expected) < 4 * se, (mean, expected, se)
    assert se < 0.02 * expected  # tight enough to tell the weightings apart
    if weighting != "elbo":  # and it really is another objective than the bound
        assert abs(mean - cross_entropy) > 10 * se


def test_entropy_mask_scale_formula_and_clamp() -> None:
    entropy = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 4.0])
    scale = entropy_mask_scale(entropy, mean_entropy=2.0)  # e_norm = 0, .25, .5, .75, 1, 2
    assert scale.tolist() == pytest.approx([1.5, 1.5, 1.5, 1.25, 1.0, 0.5])
    # Normalised to mean 1, the factor averages 1 when no clamp bites.
    moderate = torch.tensor([0.8, 1.0, 1.2, 0.9, 1.1])
    assert float(entropy_mask_scale(moderate, float(moderate.mean())).mean()) == pytest.approx(1.0)


def test_entropy_weighted_mask_frequencies_match_the_probabilities() -> None:
    gen = torch.Generator().manual_seed(1)
    n, t = 20_000, 0.4
    entropy = torch.tensor([0.1, 1.0, 2.0, 3.0, 6.0])  # mean 2.42
    scale = entropy_mask_scale(entropy, float(entropy.mean())).expand(n, -1)
    x = torch.zeros(n, 5, dtype=torch.long)
    _, masked = mask_tokens(x, torch.full((n,), t), get_schedule("linear"), MASK, gen, scale=scale)
    expected = (t * scale[0]).clamp(0, 1)
    frequency = masked.float().mean(0)
    assert torch.allclose(frequency, expected, atol=4 * math.sqrt(0.25 / n))
    assert frequency[0] > frequency[-1]  # low entropy: masked more often


def test_ar_input_mask_hides_inputs_in_training_only() -> None:
    from dlm.objectives import ar_loss

    seen: list[torch.Tensor] = []

    class Recorder(torch.nn.Module):
        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            seen.append(idx.clone())
            return torch.zeros(*idx.shape, 10)

    model = Recorder()
    x = torch.randint(0, 8, (64, 128), generator=torch.Generator().manual_seed(0))
    clean = ar_loss(model, x, bos_id=8).nll_sum
    noisy = ar_loss(model, x, bos_id=8, input_mask=0.25, mask_id=9, generator=torch.Generator().manual_seed(1))
    hidden = seen[1] == 9
    assert not hidden[:, 0].any() and (seen[1][:, 0] == 8).all()  # the [BOS] is never hidden
    assert abs(hidden[:, 1:].float().mean().item() - 0.25) < 0.02
    assert torch.equal(seen[1][~hidden], seen[0][~hidden])  # only hidden places change
    torch.testing.assert_close(noisy.nll_sum, clean)  # the targets stay the text (uniform logits here)
    model.eval()
    ar_loss(model, x, bos_id=8, input_mask=0.25, mask_id=9)
    assert torch.equal(seen[2], seen[0])  # validation and eval read clean inputs


def test_ar_input_mask_config_is_checked() -> None:
    from dlm.config import RunConfig
    from dlm.errors import DlmError

    cfg = RunConfig()
    cfg.train.ar_input_mask = 0.1
    with pytest.raises(DlmError, match="ar_input_mask is for the AR twin"):
        cfg.validate()
    cfg.train.objective = "ar"
    cfg.validate()
    cfg.train.ar_input_mask = 1.0
    with pytest.raises(DlmError, match=r"ar_input_mask=1.0 must be in \[0, 1\)"):
        cfg.validate()
