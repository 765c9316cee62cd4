"""The output head on the scored rows only (dlm.objectives.scored_rows): the same losses and gradients as
logits for every row, eager, compiled and through the wrappers."""

from __future__ import annotations

import pytest
import torch

from dlm.diffusion.schedules import Linear
from dlm.model import ModelConfig
from dlm.model.transformer import Transformer
from dlm.objectives.block_diffusion import bd3_loss
from dlm.objectives.mdlm import masked_nll, mdlm_loss
from dlm.objectives.scored_rows import takes_rows
from dlm.runtime import should_compile

V, MASK = 40, 39


class EveryRow(torch.nn.Module):
    """The same network seen as a model without `rows=`: the objectives fall back to logits for every row."""

    def __init__(self, net: Transformer):
        super().__init__()
        self.net, self.cfg = net, net.cfg

    def forward(self, *args, **kwargs) -> torch.Tensor:
        assert "rows" not in kwargs
        return self.net(*args, **kwargs)


def network(clean_causal: bool = True, tie: bool = True) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=V, n_layer=2, n_head=2, d_model=32, block_size=16,
                                   clean_causal=clean_causal, tie_weights=tie))


def tokens(B: int = 3, L: int = 16) -> torch.Tensor:
    return torch.randint(0, V - 4, (B, L), generator=torch.Generator().manual_seed(1))


def loss_and_grads(loss, net: Transformer, wrap) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    net.zero_grad(set_to_none=True)
    out = loss(wrap(net))
    out.nll_sum.backward()
    return out.nll_sum.detach(), out.per_sequence, [p.grad.clone() for p in net.parameters()]


def assert_same(loss, net: Transformer, wrap=lambda m: m) -> None:
    assert takes_rows(wrap(net)) and not takes_rows(EveryRow(net))
    total, per_seq, grads = loss_and_grads(loss, net, wrap)
    ref_total, ref_per_seq, ref_grads = loss_and_grads(loss, net, EveryRow)
    assert torch.allclose(total, ref_total, rtol=1e-5) and torch.allclose(per_seq, ref_per_seq, rtol=1e-5, atol=1e-6)
    for g, ref in zip(grads, ref_grads, strict=True):
        assert torch.allclose(g, ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("options", [
    dict(count_masking=True, clean_ar_weight=1.0, clean_input_mask=0.15),  # the CPU preset's recipe
    dict(count_masking=True),
    dict(copies=2, clean_ar_weight=0.5),
    dict(weighting="clipped", t_range=(0.3, 0.8)),
])
def test_block_diffusion_losses_and_gradients_match_every_row(options) -> None:
    net, x = network(), tokens()

    def loss(m):
        return bd3_loss(m, x, Linear(), MASK, 4, generator=torch.Generator().manual_seed(2), **options)

    net.train()
    assert_same(loss, net)


@pytest.mark.parametrize("options", [dict(), dict(edit_prob=0.1), dict(weighting="clipped")])
def test_mdlm_losses_and_gradients_match_every_row(options) -> None:
    net, x = network(clean_causal=False, tie=False), tokens()
    real = torch.arange(V - 4)

    def loss(m):
        return mdlm_loss(m, x, Linear(), MASK, generator=torch.Generator().manual_seed(3), real_ids=real, **options)

    assert_same(loss, net)


def test_too_few_masked_rows_compute_every_row() -> None:
    # one masked position: torch.compile specialises on lengths 0 and 1, so such calls take the full logits
    net, x = network(clean_causal=False), tokens(B=1)
    masked = torch.zeros_like(x, dtype=torch.bool)
    masked[0, 5] = True
    z = x.masked_fill(masked, MASK)
    t = torch.full((1,), 0.5)
    with torch.no_grad():
        nll = masked_nll(net, x, z, masked, t, MASK)
        logits = net(z, t=t)
    logits[..., MASK] = float("-inf")
    expected = torch.nn.functional.cross_entropy(logits[0, 5], x[0, 5])
    assert nll[0, 5].item() == pytest.approx(expected.item(), rel=1e-5) and nll.count_nonzero() == 1


def test_through_ddp_and_compile(tmp_path) -> None:
    import torch.distributed as dist

    net, x = network(), tokens()

    def loss(m):
        return bd3_loss(m, x, Linear(), MASK, 4, generator=torch.Generator().manual_seed(2), count_masking=True,
                        clean_ar_weight=1.0)

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert_same(loss, net, lambda m: torch.compile(torch.nn.parallel.DistributedDataParallel(m), backend="eager"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not should_compile("auto", torch.device("cpu")), reason="no C++ compiler: nothing is compiled")
def test_compiled_rows_change_length_without_recompiling() -> None:
    """The number of masked rows changes every step: inductor compiles one graph for any length. (And the
    attention layout's biases, built inside the graph, no longer make the second call compile again.)"""
    from torch._dynamo.utils import counters

    from dlm.model.block_attention import block_layout

    block_layout.cache_clear()  # a fresh layout, its biases not yet cached by an eager call
    torch._dynamo.reset()
    counters.clear()
    net = network()
    compiled = torch.compile(net)
    for seed in range(3):
        x = tokens(B=2)

        def loss(m, seed=seed, x=x):
            return bd3_loss(m, x, Linear(), MASK, 4, generator=torch.Generator().manual_seed(seed),
                            count_masking=True, clean_ar_weight=1.0)

        assert_same(loss, net, lambda m: compiled)
    assert counters["stats"]["unique_graphs"] == 1


def test_the_exact_block_nelbo_table_matches_every_row() -> None:
    """dlm eval's sum over every mask pattern of a block reads the masked rows only, with the same numbers."""
    from dlm.eval.likelihood import block_pattern_nll
    from dlm.special_ids import SpecialIds

    net, x = network().eval(), tokens()
    special = SpecialIds(mask=MASK, pad=38, bos=37, eos=36)
    with torch.no_grad():
        tables = [block_pattern_nll(m, x, special, block=4, device=torch.device("cpu"), dtype=torch.float32,
                                    batch_size=8, progress=False) for m in (net, EveryRow(net))]
    assert tables[0].shape == (3, 15, 4) and abs(tables[0] - tables[1]).max() < 1e-5
