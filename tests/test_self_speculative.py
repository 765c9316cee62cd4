"""Self-speculative block decoding: whatever the drafts, the text follows the clean copy's next-token
distribution (greedy: its argmax path; temperature 1: its marginals), the same text for any number of
drafts, a row does not depend on its batch, and the sampler refuses settings it cannot honour."""

from __future__ import annotations

import pytest
import torch
from test_block_diffusion import MASK, SPECIAL, model

from dlm.config import ModelConfig
from dlm.errors import DlmError
from dlm.model.transformer import Transformer
from dlm.sampling.canvas import build_canvas
from dlm.sampling.config import SamplerConfig
from dlm.sampling.self_speculative import DRAFTING_VOCAB, DRAFTLESS_BATCH, SelfSpeculativeDecoder, default_drafts

BLOCK = 4
BANNED = [MASK, SPECIAL.pad, SPECIAL.bos]


def peaked(seed: int = 0, scale: float = 4.0) -> Transformer:
    """A random clean-causal block model whose distributions are far from uniform, so that drafts
    are sometimes right and sometimes wrong."""
    net = model(L=24, seed=seed, clean_causal=True)
    with torch.no_grad():
        net.head.weight.mul_(scale)
    return net


def decode(net: torch.nn.Module, prompts: list[list[int]], length: int, block: int = BLOCK,
           **options) -> SelfSpeculativeDecoder:
    canvas = build_canvas([[*p, *([None] * length)] for p in prompts], SPECIAL)
    decoder = SelfSpeculativeDecoder(net, canvas, SamplerConfig(speculative=True, **options).validate(),
                                     SPECIAL, block)
    with torch.no_grad():
        decoder.run()
    return decoder


def next_token_logits(net: Transformer, tokens: list[int]) -> torch.Tensor:
    """The clean copy's reading: the text token-causally, the last row's logits (what comes next)."""
    causal = torch.ones(len(tokens), len(tokens), dtype=torch.bool).tril()
    logits = net(torch.tensor([tokens]), attn_mask=causal)[0, -1].double()
    logits[BANNED] = float("-inf")
    return logits


def first_token_logits(net: Transformer, width: int) -> torch.Tensor:
    """With no prompt, the first token comes from a block of masks (its first position)."""
    logits = net(torch.full((1, width), MASK))[0, 0].double()
    logits[BANNED] = float("-inf")
    return logits


@pytest.mark.parametrize(("block", "drafts"), [(4, 1), (4, 2), (4, 3), (1, 0)])  # blocks of 1: no drafts
def test_greedy_decoding_is_the_clean_copys_greedy_path(block: int, drafts: int) -> None:
    net = peaked()
    prompts, length = [[1, 2, 3, 4, 5], [6, 7], []], 12
    decoder = decode(net, prompts, length, block=block, temperature=0.0, drafts=drafts)
    rows = decoder.result().rows()
    with torch.no_grad():
        for prompt, row in zip(prompts, rows, strict=True):
            text = list(prompt)
            while len(text) < len(prompt) + length:
                logits = next_token_logits(net, text) if text else first_token_logits(net, block)
                text.append(int(logits.argmax()))
            assert row == text
    # every pass commits at least one token (the first reads the prompts and draws one). This random model's
    # greedy drafts are always rejected; tokens per pass above one are tested at temperature 1, below.
    assert decoder.forward_passes <= length


@pytest.mark.parametrize("drafts", [1, 3])  # 1: groups of two masks, shorter than the block; 3: the whole block
def test_sampled_text_follows_the_clean_copys_distribution(drafts: int) -> None:
    """Temperature 1: the marginal of each generated position matches the exact one computed from the
    clean copy's next-token distributions, while the drafts alone would be far from it."""
    net = peaked(seed=3, scale=3.0)
    prompt, n = [1, 2, 3], 4000
    with torch.no_grad():
        decoder = decode(net, [prompt] * n, 3, temperature=1.0, drafts=drafts)
        samples = decoder.x[:, len(prompt):]
        allowed = [i for i in range(net.cfg.vocab_size) if i not in BANNED]
        p1 = next_token_logits(net, prompt).softmax(-1)
        exact = [p1, torch.zeros_like(p1), torch.zeros_like(p1)]
        for a in allowed:
            p2 = next_token_logits(net, [*prompt, a]).softmax(-1)
            exact[1] += p1[a] * p2
            for b in allowed:
                exact[2] += p1[a] * p2[b] * next_token_logits(net, [*prompt, a, b]).softmax(-1)
        # the second position's draft: the block after the prompt, all masks, second row
        tokens = torch.tensor([[*prompt, *[MASK] * BLOCK]])
        sees = torch.ones(7, 7, dtype=torch.bool).tril()
        sees[3:, 3:] = True
        draft = net(tokens, attn_mask=sees)[0, 4].double()
        draft[BANNED] = float("-inf")
    for pos in range(3):
        empirical = torch.bincount(samples[:, pos], minlength=net.cfg.vocab_size).double() / n
        tv = 0.5 * (empirical - exact[pos]).abs().sum()
        assert tv < 0.035, (pos, tv, empirical, exact[pos])
    assert 0.5 * (draft.softmax(-1) - exact[1]).abs().sum() > 0.15  # a sampler keeping drafts would fail
    tokens_per_pass = 3 * n / (decoder.forward_passes - 1) / n
    assert 1.0 < tokens_per_pass < min(3.0, drafts + 1), tokens_per_pass  # some drafts accepted, some rejected


class EndsSoon(torch.nn.Module):
    """The model with [EOS] made likely, so rows end early."""

    def __init__(self, net: Transformer, boost: float = 3.0):
        super().__init__()
        self.net, self.cfg, self.boost = net, net.cfg, boost

    def forward(self, *args, **kwargs) -> torch.Tensor:
        logits = self.net(*args, **kwargs)
        logits[..., SPECIAL.eos] += self.boost
        return logits


# drafts None: the default (default_drafts): 2 alone, none in this batch of 4; 0: none, alone too
@pytest.mark.parametrize(("drafts", "ends", "block"), [(1, False, 4), (2, False, 4), (3, False, 4), (2, True, 4),
                                                     (None, False, 4), (None, True, 4), (None, False, 1),
                                                     (0, False, 4), (0, True, 4)])
def test_a_row_is_the_same_alone_or_in_a_batch(drafts: int | None, ends: bool, block: int,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Alone, a row takes the single-row pass (in-place cache, decisions in Python) for most of its passes, or
    with no drafts the draftless one; in a batch, the batched one (with no drafts the draftless one too). All
    must write the same text, to the [EOS] and the padding after it."""
    net = EndsSoon(peaked(seed=2), boost=1.0) if ends else peaked(seed=1)
    prompts, length = [[1, 2, 3, 4, 5, 6, 7], [3], [], [5, 5]], 24
    options = {"temperature": 1.0, "drafts": drafts, "stop_at_eos": ends}
    batch = decode(net, prompts, length, block=block, seed=7, **options).result().rows()
    single_row_passes = []
    lean = "_step_draftless" if drafts == 0 or block == 1 else "_step_single_row"
    step = getattr(SelfSpeculativeDecoder, lean)
    monkeypatch.setattr(SelfSpeculativeDecoder, lean, lambda self: single_row_passes.append(1) or step(self))
    for i, prompt in enumerate(prompts):
        canvas = build_canvas([[*prompt, *([None] * length)]], SPECIAL)
        alone = SelfSpeculativeDecoder(net, canvas, SamplerConfig(speculative=True, **options), SPECIAL,
                                       block, seeds=[7 + i])
        with torch.no_grad():
            assert alone.run().rows()[0] == batch[i]
    assert len(single_row_passes) >= (4 if ends else 16)  # the single-row pass did most of the work
    if ends:
        assert all(row[-1] == SPECIAL.eos and len(row) < len(p) + length for row, p in zip(batch, prompts, strict=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_batchs_additive_mask_writes_what_the_boolean_one_does(dtype: torch.dtype,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch's pass turns its boolean mask into an additive bias once, for every layer (SDPA in fp32, the
    explicit matmuls in bf16 at batch > 1); rows at different columns write through the cache's row index."""
    net = peaked(seed=4).to(dtype)
    prompts, length = [[1, 2, 3, 4, 5], [2], []], 20
    additive = decode(net, prompts, length, seed=5, drafts=2)
    monkeypatch.setattr(SelfSpeculativeDecoder, "_additive", lambda self, mask: mask)
    boolean = decode(net, prompts, length, seed=5, drafts=2)
    assert additive.result().rows() == boolean.result().rows()
    assert additive.forward_passes == boolean.forward_passes < 3 * length


@pytest.mark.parametrize("options", [{"temperature": 1.0}, {"temperature": 0.8, "top_p": 0.9, "stop_at_eos": True}])
def test_the_text_is_the_same_for_any_number_of_drafts(options: dict) -> None:
    """Each column's token is the clean copy's draw for that column's noise; the drafts only decide how many
    columns a pass writes. So K is a speed setting: more drafts, fewer passes, the same text."""
    net = EndsSoon(peaked(seed=3), boost=0.5)
    prompts, length = [[1, 2, 3], [4], []], 20
    texts, passes = {}, {}
    for drafts in (0, 1, 2, 3):
        decoder = decode(net, prompts, length, seed=11, drafts=drafts, **options)
        texts[drafts], passes[drafts] = decoder.result().rows(), decoder.forward_passes
    assert texts[0] == texts[1] == texts[2] == texts[3]
    # more drafts, fewer passes, each writing 1 to K + 1 tokens; none: one token a pass, the clean row alone
    assert passes[3] < passes[1] < passes[0] <= length
    for drafts in (0, 2):  # one row alone takes the single-row pass: the same text as in the batch
        alone = decode(net, prompts[:1], length, seed=11, drafts=drafts, **options)
        assert alone.result().rows() == texts[1][:1]
    assert alone.forward_passes < decode(net, prompts[:1], length, seed=11, drafts=0, **options).forward_passes
    assert texts[1] != decode(net, prompts, length, seed=12, drafts=1, **options).result().rows()  # not fixed


def test_the_default_drafts_depend_on_the_batch() -> None:
    # on a CPU rows cost compute: two drafts alone, none for a batch (the same text)
    assert DRAFTLESS_BATCH == 2 and [default_drafts(batch, 4) for batch in (1, 2, 32)] == [2, 0, 0]
    assert default_drafts(1, 2) == 1 and default_drafts(1, 1) == 0  # at most B − 1
    assert default_drafts(32, 4, device="cuda") == 1  # where rows are cheap, a batch keeps drafting
    # a BPE vocabulary drafts nothing on a CPU (drafts of its tokens are seldom right), whatever the batch
    assert DRAFTING_VOCAB == 256 and default_drafts(1, 4, vocab_size=DRAFTING_VOCAB) == 2
    assert default_drafts(1, 4, vocab_size=2048) == 0 and default_drafts(1, 4, "cuda", vocab_size=2048) == 2
    torch.manual_seed(0)
    wide = Transformer(ModelConfig(vocab_size=DRAFTING_VOCAB + 1, n_layer=1, n_head=2, d_model=16, block_size=24,
                                   clean_causal=True)).eval()
    assert decode(wide, [[1]], 8).K == 0 and decode(wide, [[1]], 8, drafts=2).K == 2  # asked for, it drafts
    assert decode(peaked(), [[1]], 8).K == 2 and decode(peaked(), [[1], [2]], 8).K == 0
    many = decode(peaked(), [[1]] * DRAFTLESS_BATCH, 8)
    assert many.K == 0 and many.forward_passes == 8  # a pass per token: the prompt's, then one for each of 7 more


@pytest.mark.parametrize(("prompts", "drafts"), [([[1, 2, 3]], None), ([[1, 2], [3], []], None), ([[1]], 0)])
def test_running_writes_what_the_steps_show(prompts: list[list[int]], drafts: int | None) -> None:
    """`run` (what `sample` takes when nothing watches) skips the frames, and with them reads of the decoder's
    tensors that a single-row pass keeps as Python numbers: the same text, passes and step count as `steps`,
    whose last frame is that text."""
    net, length = EndsSoon(peaked(seed=4), boost=0.5), 18
    options = {"seed": 3, "temperature": 1.0, "stop_at_eos": True, "drafts": drafts}
    ran = decode(net, prompts, length, **options)
    canvas = build_canvas([[*p, *([None] * length)] for p in prompts], SPECIAL)
    stepped = SelfSpeculativeDecoder(net, canvas, SamplerConfig(speculative=True, **options).validate(), SPECIAL,
                                     BLOCK)
    with torch.no_grad():
        frames = list(stepped.steps())
    assert ran.result().rows() == stepped.result().rows()
    assert (ran.forward_passes, ran.step_count) == (stepped.forward_passes, stepped.step_count) == \
        (frames[-1].forward_passes, len(frames))
    assert torch.equal(frames[-1].tokens, stepped.result().tokens)


def test_the_end_token_penalty_is_applied() -> None:
    """eos_penalty lowers [EOS]'s logit before every draw: a model that ends soon writes on with a large one."""
    net = EndsSoon(peaked(seed=2), boost=3.0)
    ended = decode(net, [[1], [2]], 16, temperature=1.0, seed=1).result().rows()
    penalised = decode(net, [[1], [2]], 16, temperature=1.0, seed=1, eos_penalty=100.0).result().rows()
    assert all(SPECIAL.eos in row for row in ended)
    assert all(SPECIAL.eos not in row for row in penalised)


def test_drafts_beyond_the_block_are_refused() -> None:
    with pytest.raises(DlmError, match="drafts=4: a block of 4 drafts at most 3"):
        decode(peaked(), [[1]], 4, drafts=4)
    with pytest.raises(DlmError, match="drafts=-1 must be ≥ 0"):
        SamplerConfig(speculative=True, drafts=-1).validate()


def test_rows_stop_at_their_first_end_token() -> None:
    decoder = decode(EndsSoon(peaked(seed=2)), [[1, 2], [3]], 16, temperature=1.0, stop_at_eos=True)
    result = decoder.result()
    for row, gen in zip(result.tokens.tolist(), result.generated.tolist(), strict=True):
        written = [t for t, g in zip(row, gen, strict=True) if g]
        assert SPECIAL.eos in written
        end = written.index(SPECIAL.eos)
        assert all(t == SPECIAL.pad for t in written[end + 1:]) and MASK not in written[:end]


def test_settings_it_cannot_honour_are_refused() -> None:
    for option in ({"remask": 0.1}, {"repetition_penalty": 1.2}, {"guidance_scale": 1.0}):
        with pytest.raises(DlmError, match="speculative decoding .* does not combine with"):
            SamplerConfig(speculative=True, **option).validate()
    canvas = build_canvas([[1, None, 2, None]], SPECIAL)  # a template, not a continuation
    with pytest.raises(DlmError, match="continues a prompt"):
        SelfSpeculativeDecoder(peaked(), canvas, SamplerConfig(speculative=True), SPECIAL, BLOCK)
