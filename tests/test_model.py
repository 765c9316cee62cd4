"""The shared transformer: bidirectional vs causal attention, KV cache, size, variants."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dlm.model import ModelConfig, Transformer
from dlm.presets import shakespeare_char


def make(cfg: ModelConfig, **changes) -> Transformer:
    torch.manual_seed(0)
    return Transformer(dataclasses.replace(cfg, **changes)).eval()


def tokens(cfg: ModelConfig, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, cfg.vocab_size, (batch, cfg.block_size), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_diffusion_mode_is_bidirectional(tiny_model_config: ModelConfig) -> None:
    model = make(tiny_model_config, causal=False)
    x = tokens(tiny_model_config)
    y = x.clone()
    y[:, -1] = (y[:, -1] + 1) % tiny_model_config.vocab_size
    out_x, out_y = model(x), model(y)
    assert out_x.shape == (2, tiny_model_config.block_size, tiny_model_config.vocab_size)
    # The first position sees the last token.
    assert (out_x[:, 0] - out_y[:, 0]).abs().max() > 1e-4


@torch.no_grad()
def test_ar_mode_is_causal(tiny_model_config: ModelConfig) -> None:
    model = make(tiny_model_config, causal=True)
    x = tokens(tiny_model_config)
    y = x.clone()
    y[:, -1] = (y[:, -1] + 1) % tiny_model_config.vocab_size
    out_x, out_y = model(x), model(y)
    torch.testing.assert_close(out_x[:, :-1], out_y[:, :-1], rtol=0, atol=1e-6)
    assert (out_x[:, -1] - out_y[:, -1]).abs().max() > 1e-4
    # And a change in the middle reaches later positions only.
    y = x.clone()
    y[:, 5] = (y[:, 5] + 1) % tiny_model_config.vocab_size
    out_y = model(y)
    torch.testing.assert_close(out_x[:, :5], out_y[:, :5], rtol=0, atol=1e-6)
    assert (out_x[:, 5:] - out_y[:, 5:]).abs().amax(dim=-1).min() > 1e-6


def test_same_parameters_for_both_objectives(tiny_model_config: ModelConfig) -> None:
    # causal is only a mask: the twins have identical parameter sets.
    a, b = make(tiny_model_config, causal=False), make(tiny_model_config, causal=True)
    assert a.num_params() == b.num_params()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


@torch.no_grad()
def test_all_mask_input_gives_the_same_logits_everywhere(tiny_model_config: ModelConfig) -> None:
    # RoPE is the only position signal and it is relative: with identical tokens at every position,
    # every position computes the same thing. (Why unconditional sampling's first step is
    # position-agnostic, and why the memorisation test in test_sampling uses a one-token prompt.)
    model = make(tiny_model_config)
    out = model(torch.full((1, tiny_model_config.block_size), 3))
    torch.testing.assert_close(out[0], out[0, :1].expand_as(out[0]), rtol=0, atol=1e-5)


def test_shakespeare_char_parameter_count() -> None:
    cfg = shakespeare_char()
    cfg.model.vocab_size = 69
    with torch.device("meta"):  # count without allocating
        model = Transformer(cfg.model)
    assert 10.6e6 < model.num_params() < 10.8e6


@torch.no_grad()
def test_kv_cache_matches_full_causal_forward(tiny_model_config: ModelConfig) -> None:
    model = make(tiny_model_config, causal=True)
    x = tokens(tiny_model_config, batch=3)
    full = model(x)
    prefill = 5
    cache = model.new_cache(3)
    steps = [model(x[:, :prefill], cache=cache)]
    for i in range(prefill, x.shape[1]):
        steps.append(model(x[:, i:i + 1], cache=cache))
    assert cache.length == x.shape[1]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-5)


@torch.no_grad()
def test_kv_cache_rejects_multi_token_extension(tiny_model_config: ModelConfig) -> None:
    model = make(tiny_model_config, causal=True)
    cache = model.new_cache(1)
    model(torch.zeros(1, 3, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="one token at a time"):
        model(torch.zeros(1, 2, dtype=torch.long), cache=cache)


def test_sequence_longer_than_block_is_rejected(tiny_model_config: ModelConfig) -> None:
    model = make(tiny_model_config)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, tiny_model_config.block_size + 1, dtype=torch.long))


@torch.no_grad()
def test_time_conditioning_requires_and_uses_t(tiny_model_config: ModelConfig) -> None:
    model = make(tiny_model_config, time_conditioning=True)
    x = tokens(tiny_model_config)
    with pytest.raises(ValueError, match="pass t"):
        model(x)
    t_low, t_high = torch.full((2,), 0.1), torch.full((2,), 0.9)
    # adaLN starts as the identity, so t has no effect until the modulation weights move.
    torch.testing.assert_close(model(x, t=t_low), model(x, t=t_high))
    for block in model.blocks:
        torch.nn.init.normal_(block.modulation.weight, std=0.1)
    out_low, out_high = model(x, t=t_low), model(x, t=t_high)
    assert out_low.shape == (2, tiny_model_config.block_size, tiny_model_config.vocab_size)
    assert (out_low - out_high).abs().max() > 1e-4


def test_swiglu_variant_runs_and_trains(tiny_model_config: ModelConfig) -> None:
    model = make(tiny_model_config, mlp="swiglu").train()
    relu2 = make(tiny_model_config)
    assert model.num_params() != relu2.num_params()  # a different MLP, not a silent fallback
    out = model(tokens(tiny_model_config))
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.blocks[0].mlp.parameters())


def test_tie_weights_shares_the_tensor(tiny_model_config: ModelConfig) -> None:
    tied, untied = make(tiny_model_config, tie_weights=True), make(tiny_model_config)
    assert tied.head.weight is tied.embed.weight
    assert tied.head.weight.data_ptr() == tied.embed.weight.data_ptr()
    v, d = tiny_model_config.vocab_size, tiny_model_config.d_model
    assert untied.num_params() - tied.num_params() == v * d


def test_bad_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(d_model=30, n_head=4).validate()
    with pytest.raises(ValueError, match="mlp"):
        ModelConfig(mlp="gelu").validate()


def test_cpu_attention_paths_agree() -> None:
    # The CPU picks its attention by dtype and mask (bench/attention.py): explicit matmuls with an
    # added causal bias, or PyTorch's SDPA for causal fp32. Both are the same function.
    from dlm.model.transformer import explicit_attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 17, 8) for _ in range(3))
    for causal in (False, True):
        reference = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
        torch.testing.assert_close(explicit_attention(q, k, v, causal, 0.0), reference, atol=1e-5, rtol=1e-5)
    # A query block at the end of a longer key sequence (a prefill after a cache): its own causal offset.
    short_q = q[:, :, -5:]
    allowed = torch.ones(17, 17, dtype=torch.bool).tril()[-5:]
    reference = torch.nn.functional.scaled_dot_product_attention(short_q, k, v, attn_mask=allowed)
    torch.testing.assert_close(explicit_attention(short_q, k, v, True, 0.0), reference, atol=1e-5, rtol=1e-5)
    # A mask may also come as an additive bias (0 / −inf), as the speculative sampler makes it once a pass.
    bias = torch.zeros(5, 17).masked_fill_(~allowed, float("-inf"))
    torch.testing.assert_close(explicit_attention(short_q, k, v, False, 0.0, bias), reference, atol=1e-5, rtol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = explicit_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), True, 0.0)
    reference = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(bf16.float(), reference, atol=0.05, rtol=0.05)


def test_residual_dropout_acts_in_training_only(tiny_model_config: ModelConfig) -> None:
    model = make(tiny_model_config, resid_dropout=0.5)
    plain = make(tiny_model_config)
    x = tokens(tiny_model_config)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x), rtol=0, atol=0)  # eval: the same network
        model.train()
        torch.manual_seed(1)
        first = model(x)
        torch.manual_seed(2)
        assert (first - model(x)).abs().max() > 1e-3  # training: a fresh mask each call
    with pytest.raises(ValueError, match="resid_dropout=1.0 must be in"):
        dataclasses.replace(tiny_model_config, resid_dropout=1.0).validate()


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_cpu_dropout_drops_its_share_and_keeps_the_mean(p: float) -> None:
    from dlm.model.transformer import dropout

    torch.manual_seed(0)
    x = torch.randn(64, 128, 96, requires_grad=True)
    y = dropout(x, p, training=True)
    dropped = (y == 0).float().mean().item()
    share = round(p * 256) / 256  # the byte mask rounds p to a multiple of 1/256
    assert abs(dropped - share) < 0.005
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / (1 - share))  # survivors rescaled: E[y] = x
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / (1 - share))  # gradient flows through the mask only
    assert torch.equal(dropout(x, p, training=False), x)
    assert torch.equal(dropout(x, 0.0, training=True), x)
    torch.manual_seed(5)
    again = dropout(x, p, training=True)
    torch.manual_seed(5)
    assert torch.equal(again, dropout(x, p, training=True))  # the mask comes from torch's seeded generator


def test_inference_linear_uses_a_transposed_copy_that_never_goes_stale() -> None:
    from dlm.model.linear import Linear

    torch.manual_seed(0)
    layer = Linear(16, 48, bias=False)
    x = torch.randn(1, 3, 16)
    with torch.no_grad():
        assert torch.allclose(layer(x), torch.nn.functional.linear(x, layer.weight), atol=1e-6)
        assert layer._transposed is not None  # the copy was made and used
        layer.weight.mul_(2)  # an in-place change (an optimizer step, a load) is seen
        assert torch.allclose(layer(x), torch.nn.functional.linear(x, layer.weight), atol=1e-6)
        layer.load_state_dict({"weight": torch.randn(48, 16)})
        assert torch.allclose(layer(x), torch.nn.functional.linear(x, layer.weight), atol=1e-6)
        layer.weight.data = torch.randn(48, 16)  # a new tensor behind the same parameter
        assert torch.allclose(layer(x), torch.nn.functional.linear(x, layer.weight), atol=1e-6)
    # With gradients the plain product runs, and they reach the weight; the state dict is unchanged.
    layer(x).sum().backward()
    assert layer.weight.grad is not None and set(layer.state_dict()) == {"weight"}
    # Sampling under inference mode, then an optimizer step, then sampling again (a preview during training).
    with torch.inference_mode():
        before = layer(x)
    torch.optim.SGD(layer.parameters(), lr=0.1).step()
    with torch.inference_mode():
        after = layer(x)
    assert torch.allclose(after, torch.nn.functional.linear(x, layer.weight.detach()), atol=1e-6)
    assert not torch.allclose(before, after)
    narrowing = Linear(48, 16, bias=False)
    with torch.no_grad():
        narrowing(torch.randn(1, 3, 48))
    assert narrowing._transposed is None  # narrowing layers were measured faster as stored


@torch.no_grad()
def test_sampling_products_match_the_plain_ones(tiny_model_config: ModelConfig) -> None:
    from dlm.model.linear import Linear

    model = make(tiny_model_config, causal=True)
    x = tokens(tiny_model_config, batch=1)[:, :8]
    fast = model(x)
    layers = [layer for layer in model.modules() if isinstance(layer, Linear)]
    assert any(layer._transposed is not None for layer in layers)
    for layer in layers:
        layer._max_numel = 0  # the plain product everywhere
    assert torch.allclose(fast, model(x), atol=1e-5)
