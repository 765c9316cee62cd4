"""Training-time options of the diffusion objective: edit corruption and prompt conditioning."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from dlm.config import RunConfig, apply_overrides
from dlm.diffusion.process import corrupt_tokens, mask_tokens, sample_prompt, sample_t
from dlm.diffusion.schedules import Schedule, get_schedule
from dlm.errors import DlmError
from dlm.model import ModelConfig, Transformer
from dlm.objectives import make_objective
from dlm.objectives.cross_entropy import token_cross_entropy
from dlm.objectives.mdlm import T_MIN, mdlm_loss
from dlm.presets import tiny
from dlm.tokenizers import Tokenizer
from dlm.tokenizers.base import SPECIAL_TOKENS
from dlm.train.trainer import train

V = 12  # real tokens 0..V-1; the four specials follow, as in the char tokenizer
MASK = V
REAL_IDS = torch.arange(V)
L = 16


def tiny_transformer(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=V + 4, n_layer=2, n_head=2, d_model=32, block_size=L)).eval()


def random_tokens(batch: int, seed: int) -> torch.Tensor:
    return torch.randint(0, V, (batch, L), generator=torch.Generator().manual_seed(seed))


class Recorder(nn.Module):
    """Uniform logits over the real tokens; remembers the last input it saw."""

    def forward(self, idx: torch.Tensor, t: torch.Tensor | None = None, cache=None) -> torch.Tensor:
        self.seen = idx.clone()
        logits = torch.full((*idx.shape, V + 4), -1e9)
        logits[..., :V] = 0.0
        return logits


def reference_mdlm_loss(model: nn.Module, x: torch.Tensor, schedule: Schedule, n_real_tokens: int,
                        generator: torch.Generator) -> torch.Tensor:
    """The MDLM loss as written before the training options existed: (B,) per-token NELBO. (Its cross-entropy
    is dlm's, read as rows: that spelling's agreement with the transposed one is tests/test_cross_entropy.py's.)"""
    B, L = x.shape
    t = sample_t(B, x.device, generator).clamp(min=T_MIN)
    z, masked = mask_tokens(x, t, schedule, MASK, generator)
    weight = -schedule.alpha_prime(t) / (1 - schedule.alpha(t)).clamp_min(1e-12)

    def masked_nll(z: torch.Tensor, masked: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logits = model(z, t=t).float()
        logits[..., MASK] = float("-inf")
        return token_cross_entropy(logits, x) * masked

    per_seq = (masked_nll(z, masked, t).sum(1) * weight) / L
    alpha_0, alpha_1 = schedule.alpha(torch.tensor([0.0, 1.0], dtype=torch.float64)).tolist()
    if alpha_0 < 1 - 1e-9:
        t0 = torch.zeros(B)
        z0, masked0 = mask_tokens(x, t0, schedule, MASK, generator)
        per_seq = per_seq + masked_nll(z0, masked0, t0).sum(1) / L
    if alpha_1 > 1e-9:
        per_seq = per_seq + alpha_1 * math.log(n_real_tokens)
    return per_seq


@pytest.mark.parametrize("schedule", ["linear", "loglinear", "sigmoid"])
@torch.no_grad()
def test_defaults_give_exactly_the_old_loss(schedule: str) -> None:
    model, x, sched = tiny_transformer(), random_tokens(8, seed=1), get_schedule(schedule)
    for seed in range(3):
        old = reference_mdlm_loss(model, x, sched, V, torch.Generator().manual_seed(seed))
        plain = mdlm_loss(model, x, sched, MASK, V, generator=torch.Generator().manual_seed(seed))
        off = mdlm_loss(model, x, sched, MASK, V, generator=torch.Generator().manual_seed(seed),
                        edit_prob=0.0, edit_weight=1.0, prompt_prob=0.0, real_ids=REAL_IDS)
        assert torch.equal(plain.per_sequence, old) and torch.equal(off.per_sequence, old)
        assert torch.equal(plain.nll_sum, off.nll_sum) and plain.n_tokens == off.n_tokens == 8 * L


class SpecialsFirst(Tokenizer):
    """A BPE-like layout: the four reserved ids come first, then V real tokens."""

    kind = "test"

    @property
    def vocab_size(self) -> int:
        return V + len(SPECIAL_TOKENS)

    def token_to_id(self, token: str) -> int:
        return SPECIAL_TOKENS.index(token)

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids) -> str:
        raise NotImplementedError

    def to_json(self) -> str:
        raise NotImplementedError


def test_make_objective_defaults_match_mdlm_loss_and_corrupt_only_to_real_ids() -> None:
    tokenizer = SpecialsFirst()
    x = random_tokens(16, seed=2) + len(SPECIAL_TOKENS)  # real ids are 4..V+3 here
    model = Recorder()
    plain = make_objective("mdlm", "linear", tokenizer)(model, x, torch.Generator().manual_seed(0))
    direct = mdlm_loss(model, x, get_schedule("linear"), tokenizer.mask_id, V,
                       generator=torch.Generator().manual_seed(0))
    assert torch.equal(plain.nll_sum, direct.nll_sum)

    objective = make_objective("mdlm", "linear", tokenizer, edit_prob=0.5)
    for seed in range(5):
        objective(model, x, torch.Generator().manual_seed(seed))
        changed = (model.seen != x) & (model.seen != tokenizer.mask_id)
        assert changed.any() and (model.seen[changed] >= len(SPECIAL_TOKENS)).all()


def test_the_antithetic_option_reaches_the_noise_levels() -> None:
    # diffusion.antithetic=true stratifies a batch's noise levels (sorted, they are 1/B apart);
    # false draws them independently.
    tokenizer, x, model = SpecialsFirst(), random_tokens(16, seed=2) + len(SPECIAL_TOKENS), Recorder()
    for antithetic in (True, False):
        out = make_objective("mdlm", "linear", tokenizer, antithetic=antithetic)(model, x,
                                                                                 torch.Generator().manual_seed(0))
        gaps = out.t.sort().values.diff()
        assert torch.allclose(gaps, torch.full_like(gaps, 1 / len(x)), atol=1e-5) == antithetic


def test_corruption_touches_only_visible_non_prompt_positions_at_the_rate_asked() -> None:
    gen = torch.Generator().manual_seed(0)
    B, T, edit_prob = 64, 256, 0.2
    real_ids = torch.arange(4, 4 + V)  # specials first: ids 0..3 must never appear
    x = real_ids[torch.randint(0, V, (B, T), generator=gen)]
    prompt = sample_prompt(B, T, 0.5, generator=gen)
    z, masked = mask_tokens(x, torch.rand(B, generator=gen), get_schedule("linear"), 0, gen, keep=prompt)
    corrupted, edited = corrupt_tokens(z, masked, edit_prob, real_ids, gen, keep=prompt)

    assert not (edited & (masked | prompt)).any()
    assert torch.equal(corrupted[~edited], z[~edited])  # nothing else moves: masks and prompts stay
    assert torch.isin(corrupted[edited], real_ids).all()
    eligible = int((~masked & ~prompt).sum())
    rate, se = edited.sum().item() / eligible, math.sqrt(edit_prob * (1 - edit_prob) / eligible)
    assert abs(rate - edit_prob) < 5 * se
    # A uniform draw keeps the original token 1 time in V.
    changed = (corrupted != z).sum().item() / eligible
    assert abs(changed - edit_prob * (1 - 1 / V)) < 5 * se
    # Every real id is drawn, about equally often.
    counts = torch.bincount(corrupted[edited] - 4, minlength=V).double()
    assert (counts > 0.5 * counts.mean()).all()


@torch.no_grad()
def test_prompts_are_never_masked_corrupted_or_scored_and_have_a_legal_length() -> None:
    model, x, lengths = Recorder(), random_tokens(256, seed=3), []
    for seed in range(4):
        t = torch.ones(len(x))  # everything outside the prompt is masked: the prompt is what is left
        out = mdlm_loss(model, x, get_schedule("linear"), MASK, V, torch.Generator().manual_seed(seed), t,
                        edit_prob=0.5, prompt_prob=1.0, real_ids=REAL_IDS)
        visible = model.seen != MASK
        prompt_len = visible.sum(1)
        assert torch.equal(visible, torch.arange(L)[None, :] < prompt_len[:, None])  # a prefix
        assert torch.equal(model.seen[visible], x[visible])  # and never corrupted
        # The uniform model scores each masked token log V at weight 1 (linear schedule, t = 1);
        # the prompt adds nothing but the sum is still divided by L.
        expected = (L - prompt_len).double() * math.log(V) / L
        torch.testing.assert_close(out.per_sequence.double(), expected, rtol=1e-6, atol=1e-6)
        lengths.append(prompt_len)
    lengths = torch.cat(lengths)
    assert lengths.min() == 1 and lengths.max() == L // 2
    assert set(lengths.tolist()) == set(range(1, L // 2 + 1))


def test_prompt_prob_is_the_fraction_of_sequences_with_a_prompt() -> None:
    prompt = sample_prompt(4000, L, 0.3, generator=torch.Generator().manual_seed(0))
    has = prompt.any(1).double()
    assert abs(has.mean().item() - 0.3) < 5 * math.sqrt(0.3 * 0.7 / 4000)
    assert torch.equal(prompt[:, 0].double(), has)  # a prompt always starts at position 0


def hand_loss(model: nn.Module, x: torch.Tensor, z: torch.Tensor, t: torch.Tensor, scored_visible: torch.Tensor,
              edit_weight: float) -> torch.Tensor:
    """(B,) masked MDLM term (linear schedule) + edit_weight × CE at `scored_visible`, per token."""
    logits = model(z, t=t).float()
    logits[..., MASK] = float("-inf")
    log_p = logits.log_softmax(-1).gather(-1, x[..., None])[..., 0]  # (B, L)
    masked = z == MASK
    weight = 1 / t.clamp(min=T_MIN)  # −α'/(1−α) for α = 1 − t
    return ((-log_p * masked).sum(1) * weight + edit_weight * (-log_p * scored_visible).sum(1)) / x.shape[1]


@torch.no_grad()
def test_edit_term_is_the_cross_entropy_at_visible_positions() -> None:
    model, x, sched = tiny_transformer(), random_tokens(8, seed=4), get_schedule("linear")
    t = torch.linspace(0.1, 0.9, 8)
    seen = Recorder()

    def loss(edit_weight: float) -> torch.Tensor:
        return mdlm_loss(model, x, sched, MASK, V, torch.Generator().manual_seed(0), t,
                         edit_prob=0.3, edit_weight=edit_weight, real_ids=REAL_IDS).per_sequence

    mdlm_loss(seen, x, sched, MASK, V, torch.Generator().manual_seed(0), t, edit_prob=0.3, real_ids=REAL_IDS)
    z = seen.seen  # the corrupted input the model sees with this seed
    assert ((z != x) & (z != MASK)).any()
    visible = z != MASK
    torch.testing.assert_close(loss(1.0), hand_loss(model, x, z, t, visible, 1.0))
    torch.testing.assert_close(loss(2.5), hand_loss(model, x, z, t, visible, 2.5))
    torch.testing.assert_close(loss(0.0), hand_loss(model, x, z, t, visible, 0.0))

    # With prompts (drawn first when t is given), prompt positions drop out of the edit term.
    out = mdlm_loss(model, x, sched, MASK, V, torch.Generator().manual_seed(0), t,
                    edit_prob=0.3, prompt_prob=1.0, real_ids=REAL_IDS).per_sequence
    mdlm_loss(seen, x, sched, MASK, V, torch.Generator().manual_seed(0), t,
              edit_prob=0.3, prompt_prob=1.0, real_ids=REAL_IDS)
    prompt = sample_prompt(len(x), L, 1.0, generator=torch.Generator().manual_seed(0))
    z = seen.seen
    assert torch.equal(z[prompt], x[prompt])
    torch.testing.assert_close(out, hand_loss(model, x, z, t, (z != MASK) & ~prompt, 1.0))
    assert not torch.allclose(out, hand_loss(model, x, z, t, z != MASK, 1.0))


# Twelve sequences, each the cyclic run s, s+1, ... mod V: any visible neighbour tells a token.
CYCLES = (torch.arange(V)[:, None] + torch.arange(L)[None, :]) % V  # (V, L)


def train_on_cycles(edit_prob: float, steps: int = 200) -> Transformer:
    model = tiny_transformer(seed=0).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen, sched = torch.Generator().manual_seed(0), get_schedule("linear")
    for _ in range(steps):
        out = mdlm_loss(model, CYCLES, sched, MASK, V, generator=gen, edit_prob=edit_prob, real_ids=REAL_IDS)
        optimizer.zero_grad(set_to_none=True)
        (out.nll_sum / out.n_tokens).backward()
        optimizer.step()
    return model.eval()


@torch.no_grad()
def fix_rate(model: Transformer) -> float:
    """Fraction of single wrong visible tokens (one per position of every sequence, a quarter of the
    others masked) at which the model's argmax is the original token."""
    gen = torch.Generator().manual_seed(7)
    pos = torch.arange(L).repeat(V)  # (V·L,)
    x = CYCLES.repeat_interleave(L, 0)  # (V·L, L): row r corrupts position pos[r]
    rows = torch.arange(len(x))
    z = x.clone()
    z[rows, pos] = (x[rows, pos] + torch.randint(1, V, (len(x),), generator=gen)) % V  # surely wrong
    hide = torch.rand(x.shape, generator=gen) < 0.25
    hide[rows, pos] = False
    z[hide] = MASK
    pred = model(z)[rows, pos].argmax(-1)
    return (pred == x[rows, pos]).double().mean().item()


@pytest.fixture(scope="module")
def edit_trained() -> Transformer:
    return train_on_cycles(0.2)


def test_edit_training_teaches_the_model_to_fix_visible_tokens(edit_trained: Transformer) -> None:
    with_edits, without = fix_rate(edit_trained), fix_rate(train_on_cycles(0.0))
    # I verified: 0.94 with edits and 0.32 without after 200 steps (chance is 1/12; 0.96 and 0.41 after 300).
    assert with_edits > 0.8, with_edits
    assert with_edits > without + 0.2, (with_edits, without)


def test_the_editing_sampler_fixes_a_corrupted_text_with_the_edit_trained_model(edit_trained: Transformer) -> None:
    # End to end: the sampler's editing rounds use what edit training taught. Two tokens of each
    # cycle are wrong and nothing is masked; editing must restore most of them and break few others.
    from dlm.sampling import Denoiser, SamplerConfig, SpecialIds, build_canvas

    special = SpecialIds(mask=MASK, pad=V + 1, bos=V + 2, eos=V + 3)
    gen = torch.Generator().manual_seed(3)
    texts = CYCLES.clone()
    wrong = torch.stack([torch.randperm(L, generator=gen)[:2] for _ in range(V)])  # (V, 2) positions
    rows = torch.arange(V)[:, None]
    texts[rows, wrong] = (texts[rows, wrong] + torch.randint(1, V, (V, 2), generator=gen)) % V
    canvas = build_canvas(texts.tolist(), special, editable=[[True] * L] * V)
    config = SamplerConfig(steps=1, temperature=0.0, edit_threshold=0.5, edit_rounds=4)
    fixed = torch.tensor(Denoiser(edit_trained, canvas, config, special).run().rows())
    was_wrong = torch.zeros_like(texts, dtype=torch.bool)
    was_wrong[rows, wrong] = True
    repaired = (fixed == CYCLES)[was_wrong].double().mean().item()
    broken = (fixed != CYCLES)[~was_wrong].double().mean().item()
    assert repaired > 0.8 and broken < 0.05, (repaired, broken)


@pytest.mark.parametrize(("override", "message"), [
    ("diffusion.edit_prob=1.0", r"edit_prob=1.0 must be in \[0, 1\)"),
    ("diffusion.edit_prob=-0.1", r"edit_prob=-0.1 must be in \[0, 1\)"),
    ("diffusion.edit_prob=nan", r"edit_prob=nan must be in"),
    ("diffusion.edit_weight=-1", r"edit_weight=-1.0 must be ≥ 0"),
    ("diffusion.prompt_prob=1.5", r"prompt_prob=1.5 must be in \[0, 1\]"),
    ("diffusion.prompt_prob=-0.5", r"prompt_prob=-0.5 must be in \[0, 1\]"),
])
def test_bad_option_values_are_one_line_errors(override: str, message: str) -> None:
    cfg = apply_overrides(tiny(), [override])
    with pytest.raises(DlmError, match=message) as info:
        cfg.validate()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("override", ["edit_prob=0.1", "prompt_prob=0.5"])
def test_options_are_for_diffusion_runs_only(override: str) -> None:
    cfg = apply_overrides(tiny(), [override, "objective=ar"])
    with pytest.raises(DlmError, match="are for diffusion runs") as info:
        cfg.validate()
    assert "\n" not in str(info.value)


def test_good_values_validate_and_round_trip() -> None:
    cfg = apply_overrides(tiny(), ["edit_prob=0.1", "edit_weight=0", "prompt_prob=1"])
    cfg.validate()
    assert (cfg.diffusion.edit_prob, cfg.diffusion.edit_weight, cfg.diffusion.prompt_prob) == (0.1, 0.0, 1.0)
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    defaults = RunConfig().diffusion
    assert (defaults.edit_prob, defaults.edit_weight, defaults.prompt_prob) == (0.0, 1.0, 0.0)


def test_training_with_both_options_resumes_exactly(corpus_file: Path, tmp_path: Path) -> None:
    def cfg(steps: int) -> RunConfig:
        return apply_overrides(tiny(), [f"data.source={corpus_file}", f"max_steps={steps}", "dtype=fp32",
                                        "ckpt_interval=3", "log_interval=1", "eval_interval=1000",
                                        "edit_prob=0.1", "prompt_prob=0.5", "edit_weight=0.5"])

    def losses(run: Path) -> dict[int, float]:
        records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in records if "loss" in r}

    train(cfg(6), tmp_path / "straight", quiet=True)
    train(cfg(3), tmp_path / "resumed", quiet=True)
    train(cfg(6), tmp_path / "resumed", resume=True, quiet=True)
    straight = losses(tmp_path / "straight")
    assert len(straight) == 6 and straight == losses(tmp_path / "resumed")
    assert all(np.isfinite(list(straight.values())))
