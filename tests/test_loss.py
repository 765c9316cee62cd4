"""The MDLM NELBO and the AR loss against models whose true likelihood is known in closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from dlm.diffusion.schedules import get_schedule
from dlm.eval.likelihood import evaluate_likelihood, loss_by_noise_level
from dlm.objectives import ar_loss, mdlm_loss
from dlm.special_ids import SpecialIds

V = 10  # real tokens 0..V-1; the four specials follow, as in the char tokenizer
MASK, PAD, BOS, EOS = V, V + 1, V + 2, V + 3
SPECIAL = SpecialIds(mask=MASK, pad=PAD, bos=BOS, eos=EOS)
L = 32


class FixedLogProbs(nn.Module):
    """Ignores its input: the same log-probabilities over the V real tokens at every position.

    The special ids get a very low logit, so the predictive distribution is exactly `log_p`
    (the loss itself only removes [MASK]).
    """

    def __init__(self, log_p: torch.Tensor):
        super().__init__()
        logits = torch.full((V + 4,), -1e9)
        logits[:V] = log_p
        self.register_buffer("logits", logits)

    def forward(self, idx: torch.Tensor, t: torch.Tensor | None = None, cache=None) -> torch.Tensor:
        return self.logits.expand(*idx.shape, -1).clone()


def uniform_model() -> FixedLogProbs:
    return FixedLogProbs(torch.zeros(V))


def random_tokens(batch: int, seed: int, probs: torch.Tensor | None = None) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if probs is None:
        return torch.randint(0, V, (batch, L), generator=gen)
    return torch.multinomial(probs, batch * L, replacement=True, generator=gen).view(batch, L)


def nelbo_samples(model: nn.Module, schedule: str, n_batches: int, batch: int = 32,
                  x: torch.Tensor | None = None) -> np.ndarray:
    """Per-batch NELBO estimates (nats/token), each from fresh data (or the fixed x) and fresh noise."""
    sched, gen = get_schedule(schedule), torch.Generator().manual_seed(123)
    estimates = []
    with torch.no_grad():
        for i in range(n_batches):
            data = random_tokens(batch, seed=i) if x is None else x
            out = mdlm_loss(model, data, sched, MASK, V, generator=gen)
            estimates.append(out.nll_sum.item() / out.n_tokens)
    return np.array(estimates)


def mean_and_se(values: np.ndarray) -> tuple[float, float]:
    # Batches are independent (antithetic sampling correlates only within a batch).
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))


@pytest.mark.parametrize("schedule", ["linear", "cosine", "sqrt"])
def test_uniform_model_nelbo_is_log_v(schedule: str) -> None:
    mean, se = mean_and_se(nelbo_samples(uniform_model(), schedule, n_batches=1500))
    assert abs(mean - math.log(V)) < 4 * se
    assert se < 0.05  # the estimate is tight enough for the check to mean something


@pytest.mark.parametrize("schedule", ["loglinear", "clipped-cosine", "sigmoid"])
def test_boundary_terms_keep_it_a_bound(schedule: str) -> None:
    # α(0) < 1 or α(1) > 0: without the reconstruction and prior terms the estimate would fall
    # below log V by (1 − α(0) + α(1))·log V. With them it is exactly log V in expectation.
    mean, se = mean_and_se(nelbo_samples(uniform_model(), schedule, n_batches=1500))
    assert mean >= math.log(V) - 4 * se
    assert abs(mean - math.log(V)) < 4 * se


def test_loss_output_shapes_and_sums() -> None:
    x = random_tokens(8, seed=0)
    out = mdlm_loss(uniform_model(), x, get_schedule("linear"), MASK, V, generator=torch.Generator().manual_seed(0))
    assert out.n_tokens == 8 * L
    assert out.per_sequence.shape == out.t.shape == (8,)
    torch.testing.assert_close(out.nll_sum, out.per_sequence.sum() * L)


def test_nelbo_is_unbiased_for_a_unigram_model() -> None:
    # The model predicts p whatever it sees; the data are fixed. Then the NELBO's expectation over
    # the noise is the cross-entropy of the data under p, position by position.
    p = torch.tensor([0.3, 0.2, 0.1, 0.1, 0.08, 0.07, 0.06, 0.04, 0.03, 0.02])
    q = torch.tensor([0.1] * V)  # data drawn from another distribution
    x = random_tokens(32, seed=7, probs=q)
    cross_entropy = float(-p.log()[x].mean())
    mean, se = mean_and_se(nelbo_samples(FixedLogProbs(p.log()), "linear", n_batches=1500, x=x))
    assert abs(mean - cross_entropy) < 4 * se
    assert se < 0.05


def test_evaluate_likelihood_uniform_model() -> None:
    windows = random_tokens(128, seed=1)
    result = evaluate_likelihood(uniform_model(), windows, SPECIAL, causal=False, device=torch.device("cpu"),
                                 dtype=torch.float32, batch_size=64, target_se=0.02, progress=False)
    assert result["kind"] == "nelbo_bound"
    assert result["mc_standard_error"] > 0
    assert abs(result["nats_per_token"] - math.log(V)) < 3 * result["mc_standard_error"] + 1e-3
    assert result["bits_per_token"] == pytest.approx(result["nats_per_token"] / math.log(2))
    assert result["windows"] == 128 and result["tokens"] == 128 * L


def test_evaluate_likelihood_ar_is_exact() -> None:
    windows = random_tokens(16, seed=2)
    result = evaluate_likelihood(uniform_model(), windows, SPECIAL, causal=True, device=torch.device("cpu"),
                                 dtype=torch.float32, progress=False)
    assert result["kind"] == "exact_nll"
    assert result["mc_standard_error"] == 0
    assert result["nats_per_token"] == pytest.approx(math.log(V), abs=1e-5)
    assert result["perplexity"] == pytest.approx(V, rel=1e-4)


def test_ar_loss_uniform_is_log_v() -> None:
    x = random_tokens(4, seed=3)
    out = ar_loss(uniform_model(), x, BOS)
    assert out.n_tokens == 4 * L
    torch.testing.assert_close(out.per_sequence, torch.full((4,), math.log(V)), rtol=0, atol=1e-5)
    assert out.nll_sum.item() / out.n_tokens == pytest.approx(math.log(V), abs=1e-5)


def test_ar_loss_predicts_each_token_from_its_prefix() -> None:
    # A model that puts all mass on "the input token + 1" scores a counting sequence perfectly,
    # which only works if the inputs are [BOS] + x[:-1] (shifted by one).
    class NextIsPlusOne(nn.Module):
        def forward(self, idx, t=None, cache=None):
            target = torch.where(idx == BOS, torch.zeros_like(idx), (idx + 1) % V)
            return torch.nn.functional.one_hot(target, V + 4).float() * 50.0

    x = torch.arange(L).remainder(V)[None]
    assert ar_loss(NextIsPlusOne(), x, BOS).nll_sum.item() < 1e-6


def test_loss_by_noise_level_is_flat_for_a_uniform_model():
    class Uniform(torch.nn.Module):  # 0 on 10 real ids, -inf on the 4 reserved ones (ids 10..13)
        def forward(self, idx, t=None):
            logits = torch.zeros(*idx.shape, 14)
            logits[..., 10:] = float("-inf")
            return logits

    windows = torch.randint(0, 10, (16, 32))
    special = SpecialIds(mask=10, pad=11, bos=12, eos=13)
    curve = loss_by_noise_level(Uniform(), windows, special, device=torch.device("cpu"), dtype=torch.float32,
                                levels=8)
    assert [round(p["t"], 4) for p in curve] == [round((k + 0.5) / 8, 4) for k in range(8)]
    assert all(p["nll_per_masked_token"] == pytest.approx(math.log(10), rel=1e-5) for p in curve)
    assert curve[0]["masked_tokens"] < curve[-1]["masked_tokens"]  # more masks at higher noise


class Bigram(nn.Module):
    """p(x_i | x_{i−1}) from a fixed table, reading the token before each position (a [MASK] there
    reads as a start): its predictions never look at the masked positions to the right."""

    def __init__(self, table: torch.Tensor, causal_input: bool):
        super().__init__()
        self.table, self.causal_input = table, causal_input  # (V + 4, V + 4) logits; rows: previous token

    def forward(self, idx, t=None, cache=None):
        previous = idx if self.causal_input else torch.cat((torch.full_like(idx[:, :1], BOS), idx[:, :-1]), 1)
        previous = torch.where(previous == MASK, torch.full_like(previous, BOS), previous)
        return self.table[previous]


def test_left_to_right_likelihood_of_a_left_reading_model_equals_its_ar_likelihood() -> None:
    from dlm.eval.likelihood import evaluate_left_to_right

    table = torch.randn(V + 4, V + 4, generator=torch.Generator().manual_seed(0))
    table[:, V:] = -1e9  # never a special token
    windows = random_tokens(6, seed=4)
    l2r = evaluate_left_to_right(Bigram(table, causal_input=False), windows, SPECIAL, device=torch.device("cpu"),
                                 dtype=torch.float32, batch_size=4, max_logits=5000, progress=False)
    # The AR twin reads [BOS] + x[:-1]: the same conditionals, the causal way.
    ar = ar_loss(Bigram(table, causal_input=True), windows, BOS)
    assert l2r["nats_per_token"] == pytest.approx(ar.nll_sum.item() / ar.n_tokens, rel=1e-5)
    assert l2r["sequences_scored"] == 6 * L and l2r["forward_passes"] > 1  # chunked by max_logits


def test_left_to_right_of_a_context_free_model_is_its_cross_entropy() -> None:
    from dlm.eval.likelihood import evaluate_left_to_right

    p = torch.softmax(torch.randn(V, generator=torch.Generator().manual_seed(1)), 0)
    windows = random_tokens(3, seed=5)
    l2r = evaluate_left_to_right(FixedLogProbs(p.log()), windows, SPECIAL, device=torch.device("cpu"),
                                 dtype=torch.float32, progress=False)
    assert l2r["nats_per_token"] == pytest.approx(float(-p.log()[windows].mean()), rel=1e-5)


def test_eval_l2r_on_a_subset_reports_the_bound_on_the_same_windows(tiny_twins: dict, tmp_path,
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture) -> None:
    import json

    from dlm.cli import main

    monkeypatch.setenv("DLM_CACHE", str(tiny_twins["root"] / "cache"))
    report = tmp_path / "eval.json"
    assert main(["eval", "--ckpt", str(tiny_twins["mdlm"]), "--max-passes", "2", "--quiet", "--l2r",
                 "--l2r-windows", "2", "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "left-to-right NLL" in out and "NELBO on the same 2 windows" in out
    result = json.loads(report.read_text())
    l2r = result["left_to_right"]
    assert l2r["windows"] == 2 < result["windows"] and l2r["tokens"] == 2 * 64
    # Both are per-token figures of the same text: finite, positive, and under a uniform guess's.
    for value in (l2r["nats_per_token"], l2r["nelbo_same_windows"]):
        assert 0 < value < math.log(80)


def test_eval_l2r_scores_32_windows_by_default_and_says_so_first(tiny_twins: dict, tmp_path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture) -> None:
    import json

    from dlm.cli import main

    monkeypatch.setenv("DLM_CACHE", str(tiny_twins["root"] / "cache"))
    report = tmp_path / "eval.json"
    assert main(["eval", "--ckpt", str(tiny_twins["mdlm"]), "--max-passes", "2", "--quiet", "--l2r",
                 "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["left_to_right"]["windows"] == 32 < result["windows"]
    out = capsys.readouterr().out
    plan = next(line for line in out.splitlines() if line.startswith("  left-to-right: "))
    assert plan.startswith(f"  left-to-right: the first 32 of {result['windows']} windows × 64 positions = 2,048 "
                           "sequences, about ")
    assert plan.endswith("(--l2r-windows N or --l2r-windows all to change)")
    assert out.index(plan) < out.index("left-to-right NLL")  # said before it starts
    assert "NELBO on the same 32 windows" in out


def test_l2r_windows_takes_a_count_or_all() -> None:
    from dlm.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["eval", "--ckpt", "run"]).l2r_windows == 32
    assert parse(["eval", "--ckpt", "run", "--l2r-windows", "all"]).l2r_windows == 0  # 0: every window
    assert parse(["eval", "--ckpt", "run", "--l2r-windows", "8"]).l2r_windows == 8
    with pytest.raises(SystemExit):
        parse(["eval", "--ckpt", "run", "--l2r-windows", "many"])
