"""The diffusion samplers and AR decoding: the contract every option keeps, exactness of the
caches, batch independence, variable length, guidance, remasking, editing and streaming."""

from __future__ import annotations

import pytest
import torch

from dlm.diffusion.schedules import Cosine, Linear
from dlm.model import ModelConfig, Transformer
from dlm.objectives import ar_loss, mdlm_loss
from dlm.sampling import (
    ORDERS,
    ARDecoder,
    Denoiser,
    SamplerConfig,
    SpecialIds,
    ar_generate,
    build_canvas,
    diffusion_generate,
    diffusion_stream,
    prompt_canvas,
)

VOCAB = 12  # real tokens 0..11, then [MASK] [PAD] [BOS] [EOS]
SPECIAL = SpecialIds(mask=VOCAB, pad=VOCAB + 1, bos=VOCAB + 2, eos=VOCAB + 3)
MASK = SPECIAL.mask


def tiny_model(causal: bool = False, seed: int = 0, block_size: int = 40) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=VOCAB + 4, n_layer=2, n_head=2, d_model=32, block_size=block_size, causal=causal)
    return Transformer(cfg).eval()


class Oracle(torch.nn.Module):
    """A stand-in denoiser that knows the answer: at every position it puts `strength` logits on
    target[position] (positions from the canvas, so it works on padded batches)."""

    def __init__(self, target: list[int], strength: float = 8.0, vocab: int = VOCAB + 4):
        super().__init__()
        self.target, self.strength, self.vocab = torch.tensor(target), strength, vocab

    def forward(self, idx, t=None, positions=None, attn_mask=None):
        B, T = idx.shape
        pos = positions if positions is not None else torch.arange(T).expand(B, T)
        return torch.nn.functional.one_hot(self.target[pos], self.vocab).float() * self.strength


MODES = {
    "plain": {},
    "blocks": {"block_length": 4},
    "blocks-prefix-cache": {"block_length": 4, "block_context": "prefix", "kv_cache": True},
    "blocks-dual-cache": {"block_length": 4, "kv_cache": True},
    "remask": {"remask": 0.3, "steps": 24},
    "top-p-rep": {"top_p": 0.9, "top_k": 8, "repetition_penalty": 1.3},
    "guidance": {"guidance_scale": 1.5},
    "cosine": {"schedule": "cosine"},
}


def generate(model, prompts, length=12, **options):
    options.setdefault("steps", 8)
    return diffusion_generate(model, prompt_canvas(prompts, length, SPECIAL), SamplerConfig(**options), SPECIAL)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("sampler", ORDERS)
def test_sampler_contract(sampler: str, mode: str) -> None:
    # Keeps the prompt, leaves no mask, fills exactly `length` positions, is a function of the seed.
    model = tiny_model()
    prompts = [[1, 2, 3, 4], [5, 6, 7, 8]]
    result = generate(model, prompts, sampler=sampler, seed=0, **MODES[mode])
    assert result.tokens.shape == (2, 16)
    assert result.tokens[:, :4].tolist() == prompts
    assert not (result.tokens == MASK).any()
    assert ((result.tokens[:, 4:] < VOCAB) | (result.tokens[:, 4:] == SPECIAL.eos)).all()
    assert torch.equal(generate(model, prompts, sampler=sampler, seed=0, **MODES[mode]).tokens, result.tokens)
    assert not torch.equal(generate(model, prompts, sampler=sampler, seed=1, **MODES[mode]).tokens, result.tokens)


@pytest.mark.parametrize("sampler", ORDERS)
def test_infilling_keeps_the_template(sampler: str) -> None:
    model = tiny_model()
    row = [3, None, None, 4, 5, None, None, None, 6]
    result = diffusion_generate(model, build_canvas([row], SPECIAL), SamplerConfig(sampler=sampler, steps=3), SPECIAL)
    out = result.rows()[0]
    assert [out[i] for i, tok in enumerate(row) if tok is not None] == [3, 4, 5, 6]
    assert MASK not in out and len(out) == len(row)


@pytest.mark.parametrize("sampler", ORDERS)
def test_oracle_text_is_recovered_by_every_sampler(sampler: str) -> None:
    target = [7, 3, 9, 1, 0, 4, 4, 2, 11, 5]
    model = Oracle(target)
    result = diffusion_generate(model, build_canvas([[7, *[None] * 9]], SPECIAL),
                                SamplerConfig(sampler=sampler, steps=4), SPECIAL)
    assert result.rows()[0] == target


# --- a memorised sequence --------------------------------------------------------------------

SEQUENCE = torch.randperm(VOCAB, generator=torch.Generator().manual_seed(0))  # each token once


def memorise(causal: bool, steps: int) -> Transformer:
    model = tiny_model(causal, seed=1, block_size=16).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    noise = torch.Generator().manual_seed(0)
    x = SEQUENCE.repeat(32, 1)
    for _ in range(steps):
        out = ar_loss(model, x, SPECIAL.bos) if causal else mdlm_loss(model, x, Linear(), MASK, VOCAB, generator=noise)
        opt.zero_grad()
        (out.nll_sum / out.n_tokens).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def memorised() -> Transformer:
    return memorise(causal=False, steps=300)


@pytest.mark.parametrize("options", [
    *({"sampler": s} for s in ORDERS),
    {"sampler": "confidence", "steps": 4},  # several tokens per step
    {"block_length": 4},
    {"block_length": 4, "kv_cache": True},
    {"threshold": 0.9},
    {"remask": 0.2, "steps": 22},
], ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_memorised_sequence_is_recovered(memorised: Transformer, options: dict) -> None:
    # From [first token | MASK × 11]: the prompt is the model's only position reference (RoPE is
    # relative, so an all-[MASK] canvas looks the same at every position; see test_model).
    options = {"steps": 11, "temperature": 0.0, **options}
    result = generate(memorised, [SEQUENCE[:1].tolist()], length=len(SEQUENCE) - 1, **options)
    assert result.rows()[0] == SEQUENCE.tolist()


def test_ar_model_memorises_a_sequence() -> None:
    model = memorise(causal=True, steps=150)
    result = ar_generate(model, [[]], len(SEQUENCE), SamplerConfig(temperature=0.0), SPECIAL)
    assert result.rows()[0] == SEQUENCE.tolist()


# --- exactness of the fast paths -------------------------------------------------------------

@pytest.mark.parametrize("sampler", [o for o in ORDERS if o != "ancestral"])  # ancestral has no threshold
def test_threshold_one_is_one_token_per_step_confidence_decoding(sampler: str) -> None:
    model = tiny_model()
    for temperature in (0.0, 1.0):
        plain = generate(model, [[1, 2]], length=10, steps=10, sampler=sampler, temperature=temperature, seed=3)
        thresh = generate(model, [[1, 2]], length=10, steps=10, sampler=sampler, temperature=temperature, seed=3,
                          threshold=1.0)
        assert torch.equal(plain.tokens, thresh.tokens)
        assert plain.forward_passes == thresh.forward_passes == 10


def test_threshold_commits_many_tokens_per_step_when_sure() -> None:
    model = Oracle([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0])
    result = generate(model, [[1]], length=11, steps=11, threshold=0.9)
    assert result.rows()[0] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0]
    assert result.forward_passes == 1  # every position is above the threshold at once


@pytest.mark.parametrize("sampler", ORDERS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prefix_kv_cache_gives_the_same_tokens_as_no_cache(sampler: str, seed: int) -> None:
    model = tiny_model()
    options = {"block_length": 4, "block_context": "prefix", "steps": 16, "sampler": sampler, "seed": seed}
    uncached = generate(model, [[1, 2, 3]], length=16, **options)
    cached = generate(model, [[1, 2, 3]], length=16, kv_cache=True, **options)
    assert torch.equal(uncached.tokens, cached.tokens)


def test_dual_cache_is_exact_at_each_blocks_first_step_and_approximate_after() -> None:
    # The dual cache refreshes every key at a block's first step, so with one step per block it
    # is exact; with more steps the prefix/suffix keys go stale within a block (documented).
    model = tiny_model()
    one_step = {"block_length": 4, "steps": 4}
    for seed in range(3):
        assert torch.equal(generate(model, [[1, 2, 3]], length=16, seed=seed, **one_step).tokens,
                           generate(model, [[1, 2, 3]], length=16, seed=seed, kv_cache=True, **one_step).tokens)
    # Four steps per block: the model sees the whole canvas once per block, then the block alone.
    widths: list[int] = []
    hook = model.register_forward_pre_hook(lambda module, args: widths.append(args[0].shape[1]))
    config = SamplerConfig(block_length=4, steps=16, kv_cache=True, seed=0)
    denoiser = Denoiser(model, prompt_canvas([[1, 2, 3]], 16, SPECIAL), config, SPECIAL)
    errors = []
    with torch.no_grad():
        for _ in denoiser.steps():
            (start, end), _ = denoiser._last[0]  # the logits this step used, and the canvas they saw
            seen, used = denoiser._last[1], denoiser._last[2]
            exact = model(seen)[:, start:end].float()
            widths.pop()  # that reference call is not the sampler's
            finite = torch.isfinite(used)
            errors.append(float((used[finite] - exact[finite]).abs().max()))
    hook.remove()
    assert widths == [19, 4, 4, 4] * 4
    assert not (denoiser.x == MASK).any()
    first_steps, later_steps = errors[0::4], [e for i, e in enumerate(errors) if i % 4]
    assert max(first_steps) < 1e-5  # refreshed: exact
    assert max(later_steps) > 1e-4  # stale keys outside the block: approximate…
    assert max(later_steps) < 1.0  # …but close to the exact logits


def test_reusing_logits_when_nothing_changed_is_exact_and_saves_forward_passes() -> None:
    model = tiny_model()
    options = {"sampler": "ancestral", "steps": 64, "seed": 4}
    reused = generate(model, [[1]], length=16, **options)
    recomputed = generate(model, [[1]], length=16, reuse_logits=False, **options)
    assert torch.equal(reused.tokens, recomputed.tokens)
    assert reused.forward_passes < recomputed.forward_passes


MIXED_PROMPTS = [[1, 2, 3], [4], [5, 6, 7, 8, 9, 1], []]


@pytest.mark.parametrize("mode", [*MODES, "stop-at-eos", "threshold"])
def test_batched_equals_one_at_a_time_with_mixed_prompt_lengths(mode: str) -> None:
    model = tiny_model()
    options = {"stop-at-eos": {"stop_at_eos": True}, "threshold": {"threshold": 0.2, "sampler": "margin"}}.get(
        mode, MODES.get(mode))
    batch = generate(model, MIXED_PROMPTS, seed=10, **options).rows()
    for i, prompt in enumerate(MIXED_PROMPTS):
        assert generate(model, [prompt], seed=10 + i, **options).rows()[0] == batch[i]


def test_ar_batched_equals_one_at_a_time_with_mixed_prompt_lengths() -> None:
    model = tiny_model(causal=True)
    config = SamplerConfig(seed=5, repetition_penalty=1.2)
    batch = ar_generate(model, MIXED_PROMPTS, 10, config, SPECIAL).rows()
    for i, prompt in enumerate(MIXED_PROMPTS):
        alone = ar_generate(model, [prompt], 10, SamplerConfig(seed=5 + i, repetition_penalty=1.2), SPECIAL).rows()
        assert alone[0] == batch[i]
        assert batch[i][:len(prompt)] == prompt and len(batch[i]) == len(prompt) + 10


def test_committed_counts_follow_the_schedule() -> None:
    model = tiny_model()
    length, steps = 20, 5
    config = SamplerConfig(steps=steps, schedule="cosine")
    states = list(diffusion_stream(model, prompt_canvas([[1]], length, SPECIAL), config, SPECIAL))
    times = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    expected = [round(length * (1 - float(a))) for a in Cosine().alpha(times[1:])]
    assert [int((s.tokens == MASK).sum()) for s in states] == expected


# --- variable length, guidance, repetition, remasking, editing, streaming --------------------

def test_stop_at_the_first_completed_eos() -> None:
    target = [1, 2, 3, 4, SPECIAL.eos, 5, 6, 7, 8, 9]
    model = Oracle(target)
    result = generate(model, [[1]], length=9, steps=9, stop_at_eos=True)
    assert result.rows()[0] == [1, 2, 3, 4, SPECIAL.eos]
    assert result.tokens[0, 5:].tolist() == [SPECIAL.pad] * 5
    assert result.forward_passes < 9  # nothing after the [EOS] is decoded
    # Without the stop the canvas is filled as usual.
    assert generate(model, [[1]], length=9, steps=9).rows()[0] == target


def test_ar_stops_at_eos() -> None:
    class EosAtThree(torch.nn.Module):
        def new_cache(self, batch, max_len):
            return tiny_model(causal=True).new_cache(batch, max_len)

        def forward(self, idx, cache=None, positions=None, attn_mask=None):
            n = cache.length + idx.shape[1]
            cache.length = n
            logits = torch.zeros(idx.shape[0], idx.shape[1], VOCAB + 4)
            logits[..., SPECIAL.eos if n >= 4 else 2] = 50.0
            return logits

    result = ar_generate(EosAtThree(), [[1]], 8, SamplerConfig(stop_at_eos=True), SPECIAL)
    assert result.rows()[0] == [1, 2, 2, SPECIAL.eos]


def test_ar_running_writes_what_the_steps_show_and_penalises_the_end_token() -> None:
    """`run` skips the frames: the same text and counts as `steps`; eos_penalty lowers [EOS] before each draw."""
    model = tiny_model(causal=True, seed=3)
    with torch.no_grad():
        model.head.weight[SPECIAL.eos] = model.head.weight[2] * 8  # [EOS] likely
    config = SamplerConfig(seed=2, stop_at_eos=True)
    with torch.no_grad():
        ran = ARDecoder(model, MIXED_PROMPTS, 10, config, SPECIAL).run()
    stepped = ARDecoder(model, MIXED_PROMPTS, 10, config, SPECIAL)
    with torch.no_grad():
        frames = list(stepped.steps())
    assert ran.rows() == stepped.result().rows() and any(SPECIAL.eos in row for row in ran.rows())
    assert (ran.forward_passes, ran.steps) == (stepped.forward_passes, len(frames))
    penalised = ar_generate(model, MIXED_PROMPTS, 10, SamplerConfig(seed=2, stop_at_eos=True, eos_penalty=100.0),
                            SPECIAL).rows()
    assert not any(SPECIAL.eos in row for row in penalised)


def test_guidance_extrapolates_from_the_unconditional_prediction() -> None:
    class PromptSensitive(torch.nn.Module):
        # cond logits [2, 1.9, 0, ...] when the prompt (column 0) is visible, [2, 0, 0, ...] when masked.
        def forward(self, idx, t=None, positions=None, attn_mask=None):
            logits = torch.full((*idx.shape, VOCAB + 4), -10.0)
            logits[..., 0] = 2.0
            logits[..., 1] = torch.where(idx[:, :1] == MASK, 0.0, 1.9)
            return logits

    unguided = generate(PromptSensitive(), [[5]], length=3, steps=3, temperature=0.0)
    guided = generate(PromptSensitive(), [[5]], length=3, steps=3, temperature=0.0, guidance_scale=1.0)
    assert unguided.rows()[0] == [5, 0, 0, 0]
    assert guided.rows()[0] == [5, 1, 1, 1]  # 1.9 + 1·(1.9 − 0) = 3.8 > 2
    assert guided.forward_passes == unguided.forward_passes  # both branches share one batched forward


def test_repetition_penalty_lowers_repeats() -> None:
    class LikesZero(torch.nn.Module):
        def forward(self, idx, t=None, positions=None, attn_mask=None):
            logits = torch.zeros(*idx.shape, VOCAB + 4)
            logits[..., 0] = 2.0  # token 0 is favoured everywhere
            return logits

    def repeats(penalty: float, sampler: str) -> float:
        rows = generate(LikesZero(), [[]] * 64, length=16, steps=16, repetition_penalty=penalty,
                        sampler=sampler).rows()
        return sum(row.count(0) for row in rows) / len(rows)

    # Random order: each draw sees p(0) = e²/(e² + 12) ≈ 0.38 unpenalised, e^(2/3)/(e^(2/3) + 12) ≈ 0.14
    # once a 0 is visible: about 6 zeros per 16 tokens against about 2–3.
    assert repeats(3.0, "random") < 0.6 * repeats(1.0, "random")
    assert repeats(3.0, "confidence") < repeats(1.0, "confidence") - 2  # confident zeros go first, still fewer


@pytest.mark.parametrize("sampler", ["confidence", "ancestral"])
def test_remasking_revisits_tokens_and_still_finishes(sampler: str) -> None:
    model = tiny_model()
    canvas = prompt_canvas([[1, 2]], 12, SPECIAL)
    states = list(diffusion_stream(model, canvas, SamplerConfig(sampler=sampler, steps=48, remask=0.5), SPECIAL))
    assert sum(int(s.remasked.sum()) for s in states) > 0
    assert not (states[-1].tokens == MASK).any()
    assert all(not s.remasked[:, :2].any() for s in states)  # never the prompt


def test_editing_fixes_wrong_visible_tokens_and_keeps_right_ones() -> None:
    target = [1, 2, 3, 4, 5, 6, 7, 8]
    text = [1, 2, 9, 4, 5, 0, 7, 8]  # two wrong tokens
    canvas = build_canvas([text], SPECIAL, editable=[[True] * len(text)])
    config = SamplerConfig(steps=1, edit_threshold=0.5, edit_rounds=3)
    denoiser = Denoiser(Oracle(target), canvas, config, SPECIAL)
    states = list(denoiser.steps())
    assert denoiser.result().rows()[0] == target
    assert states[0].edited[0].nonzero().squeeze(1).tolist() == [2, 5]
    assert not states[-1].edited.any()  # converged: the last round changed nothing


def test_editing_during_decoding_revisits_committed_tokens() -> None:
    # A fixed prompt is never edited; wrong template tokens marked editable are fixed mid-decoding.
    target = [1, 2, 3, 4, 5, 6]
    editable = [[False, True, False, False, False, False]]
    canvas = build_canvas([[1, 9, None, None, None, None]], SPECIAL, editable=editable)
    result = diffusion_generate(Oracle(target), canvas, SamplerConfig(steps=4, edit_threshold=0.5), SPECIAL)
    assert result.rows()[0] == target


def test_stream_reports_every_commit() -> None:
    model = tiny_model()
    canvas = prompt_canvas([[1, 2], [3]], 10, SPECIAL)
    states = list(diffusion_stream(model, canvas, SamplerConfig(steps=5), SPECIAL))
    assert len(states) == 5 and [s.step for s in states] == [1, 2, 3, 4, 5]
    committed = torch.stack([s.committed for s in states]).sum(0)
    assert torch.equal(committed.bool(), canvas.tokens == MASK)  # each mask committed exactly once
    assert committed.max() == 1
    final = diffusion_generate(model, canvas, SamplerConfig(steps=5), SPECIAL)
    assert torch.equal(states[-1].tokens, final.tokens)


def test_bad_sampler_options_are_one_line_errors() -> None:
    from dlm.errors import DlmError

    for options, match in [({"sampler": "nope"}, "sampler"), ({"steps": 0}, "steps"), ({"threshold": 1.5}, "threshold"),
                           ({"kv_cache": True}, "block_length"), ({"edit_rounds": 2}, "edit_threshold"),
                           ({"sampler": "ancestral", "threshold": 0.5}, "confidence")]:
        with pytest.raises(DlmError, match=match):
            SamplerConfig(**options).validate()
    with pytest.raises(DlmError, match="unknown sampling option"):
        SamplerConfig.from_kwargs(temprature=1.0)
