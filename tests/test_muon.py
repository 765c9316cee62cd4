"""train.optimizer=muon: which parameters Muon takes, that one step is a scaled orthogonal update,
that it learns, and that its state round-trips."""

from __future__ import annotations

import pytest
import torch

from dlm.config import RunConfig, apply_overrides
from dlm.errors import DlmError
from dlm.model import Transformer
from dlm.presets import tiny
from dlm.train.optim import MuonWithAdamW, build_optimizer, is_hidden_matrix, orthogonalise


def tiny_model(**fields) -> Transformer:
    cfg = tiny().model
    cfg.vocab_size = 20
    for name, value in fields.items():
        setattr(cfg, name, value)
    return Transformer(cfg)


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest() -> None:
    model = tiny_model(time_conditioning=True)
    opt = build_optimizer("muon", model, 1e-3, 0.1, (0.9, 0.95), fused=False)
    assert isinstance(opt, MuonWithAdamW)
    in_muon = {id(p) for g in opt.muon.param_groups for p in g["params"]}
    in_adamw = {id(p) for g in opt.adamw.param_groups for p in g["params"]}
    names = dict(model.named_parameters())
    assert not in_muon & in_adamw and in_muon | in_adamw == {id(p) for p in names.values()}
    muon_names = {n for n, p in names.items() if id(p) in in_muon}
    assert "embed.weight" not in muon_names and "head.weight" not in muon_names
    assert all(names[n].dim() == 2 for n in muon_names)
    assert {"blocks.0.attn.qkv.weight", "blocks.0.mlp.up.weight", "time_mlp.0.weight"} <= muon_names
    assert not is_hidden_matrix("blocks.0.norm1.weight", names["blocks.0.norm1.weight"])
    # One lr for all: the trainer sets every group's.
    assert len(opt.param_groups) == len(opt.muon.param_groups) + len(opt.adamw.param_groups)
    assert isinstance(build_optimizer("adamw", model, 1e-3, 0.1, (0.9, 0.95), fused=False), torch.optim.AdamW)


def test_a_muon_step_is_an_orthogonalised_update_at_adamw_scale() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Linear(32, 64, bias=False))
    opt = MuonWithAdamW(layer, lr=0.01, weight_decay=0.0, betas=(0.9, 0.95), fused=False)
    before = layer[0].weight.detach().clone()
    layer[0].weight.grad = torch.randn(64, 32) * 1e-3  # any scale: the update's size does not follow it
    opt.step()
    update = (before - layer[0].weight.detach()) / 0.01
    singular = torch.linalg.svdvals(update.float())
    # Newton–Schulz makes every singular value roughly equal (about 0.7–1.2 here), times the
    # AdamW-matching scale 0.2·sqrt(max(64, 32)).
    scale = 0.2 * 64 ** 0.5
    assert singular.min() > 0.5 * scale and singular.max() < 1.3 * scale


def test_muon_learns_a_linear_map() -> None:
    torch.manual_seed(0)
    target = torch.randn(16, 16)
    net = torch.nn.Sequential(torch.nn.Linear(16, 16, bias=False))
    opt = MuonWithAdamW(net, lr=0.1, weight_decay=0.0, betas=(0.9, 0.95), fused=False)
    x = torch.randn(256, 16)
    start = torch.nn.functional.mse_loss(net(x), x @ target.T).item()
    for i in range(200):
        for group in opt.param_groups:  # as the trainer does: a decaying lr set on every group
            group["lr"] = 0.1 * (1 - i / 200)
        loss = torch.nn.functional.mse_loss(net(x), x @ target.T)
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert loss.item() < 0.05 * start


def test_state_round_trip_and_a_foreign_state_is_refused() -> None:
    model = tiny_model()
    opt = MuonWithAdamW(model, 1e-3, 0.1, (0.9, 0.95), fused=False)
    x = torch.randint(0, 20, (2, 16))
    model(x).float().logsumexp(-1).mean().backward()
    opt.step()
    saved = opt.state_dict()
    again = MuonWithAdamW(model, 1e-3, 0.1, (0.9, 0.95), fused=False)
    again.load_state_dict(saved)
    first = next(iter(again.muon.state.values()))["momentum_buffer"]
    assert torch.equal(first, next(iter(opt.muon.state.values()))["momentum_buffer"])
    adamw_state = torch.optim.AdamW(model.parameters()).state_dict()
    with pytest.raises(ValueError, match="not train.optimizer=muon"):
        again.load_state_dict(adamw_state)


def test_config_checks() -> None:
    with pytest.raises(DlmError, match="train.optimizer='sgd' is not one of adamw, muon"):
        apply_overrides(RunConfig(), ["train.optimizer=sgd"]).validate()
    with pytest.raises(DlmError, match="muon does not shard under FSDP"):
        apply_overrides(RunConfig(), ["train.optimizer=muon", "train.fsdp=true"]).validate()


def test_orthogonalise_flattens_the_spectrum_in_a_batch_in_either_dtype() -> None:
    torch.manual_seed(0)
    # Very unequal singular values in, nearly equal out, for wide and tall matrices alike.
    mats = torch.randn(3, 24, 40) * torch.logspace(-1, 0, 24)[None, :, None]
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 0.05)):
        out = orthogonalise(mats, dtype=dtype).float()
        assert out.shape == mats.shape
        singular = torch.linalg.svdvals(out)
        assert singular.min() > 0.5 and singular.max() < 1.3
        # A batch is each matrix on its own; a tall matrix is its transpose's transpose.
        torch.testing.assert_close(out[1], orthogonalise(mats[1], dtype=dtype).float(), atol=tol, rtol=0)
        torch.testing.assert_close(orthogonalise(mats[0].T, dtype=dtype).float(), out[0].T, atol=tol, rtol=0)


def test_resuming_with_the_other_optimizer_says_what_to_do(corpus_file, tmp_path) -> None:  # noqa: ANN001
    from dlm.train.trainer import train

    cfg = tiny()
    cfg.data.source = str(corpus_file)
    cfg.train.max_steps, cfg.train.ckpt_interval, cfg.train.compile, cfg.train.optimizer = 4, 2, "no", "adamw"
    train(cfg, tmp_path / "run", quiet=True)
    cfg.train.max_steps, cfg.train.optimizer = 6, "muon"
    with pytest.raises(DlmError, match="does not fit this run's optimizer.*--fresh-optimizer"):
        train(cfg, tmp_path / "run", resume=True, quiet=True)
