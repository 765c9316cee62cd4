"""Checkpoints: loading, exact resume, retention, damage detection, and refusing to overwrite a run."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import dlm
from dlm.config import RunConfig
from dlm.errors import DlmError
from dlm.model import Transformer
from dlm.presets import tiny
from dlm.run_folder import RunFolder, load_trainer_state
from dlm.runtime import pick_inference_dtype
from dlm.train.trainer import TrainResult, train


def tiny_config(corpus: Path, max_steps: int = 20, **train_fields) -> RunConfig:
    cfg = tiny()
    cfg.data.source = str(corpus)
    cfg.train.max_steps, cfg.train.ckpt_interval, cfg.train.compile = max_steps, 10, "no"
    cfg.train.log_interval, cfg.train.eval_batches = 5, 2
    for name, value in train_fields.items():
        setattr(cfg.train, name, value)
    return cfg


def weights(ckpt: Path, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    return load_file(str(ckpt / name))


def log_records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_run_layout_and_load(corpus_file: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = train(tiny_config(corpus_file), run, quiet=True)
    assert result.step == 20 and result.stopped_by == "max_steps"
    assert result.val_loss is not None and result.val_loss > 0
    assert (run / "config.json").is_file() and (run / "tokenizer.json").is_file()
    assert [c.name for c in RunFolder(run).checkpoints()] == ["step-00000010", "step-00000020"]

    x = torch.randint(0, 40, (2, 32), generator=torch.Generator().manual_seed(0))
    pipe = dlm.load(run)
    assert pipe.checkpoint.name == "step-00000020"
    # Sampling runs the network in fp32 on a CPU (bf16 on CUDA), the logits always in fp32.
    assert not pipe.model.training and pipe.model.fp32_logits
    assert pipe.dtype == pick_inference_dtype("auto", torch.device("cpu")) == torch.float32
    assert dlm.load(run, dtype="fp32").dtype == torch.float32
    with torch.no_grad():
        logits = pipe.model(x)
        # Loading again, or loading the checkpoint folder itself, gives the same model.
        assert torch.equal(dlm.load(run).model(x), logits)
        assert torch.equal(dlm.load(pipe.checkpoint).model(x), logits)
        # The same weights put into a fresh model by hand (EMA weights are the default when saved).
        name = "ema.safetensors" if pipe.weights == "ema" else "model.safetensors"
        fresh = Transformer(pipe.config.model).eval()
        fresh.load_state_dict(weights(pipe.checkpoint, name), strict=False)
        assert torch.equal(fresh(x), logits)
        # And the raw weights are the ones the optimizer produced.
        raw = dlm.load(run, weights="raw")
        fresh.load_state_dict(weights(pipe.checkpoint), strict=False)
        assert torch.equal(raw.model(x), fresh(x))
    ids = pipe.generate_ids("The ", length=8, steps=4, seed=0)
    assert ids.shape == (1, 12) and ids[0, :4].tolist() == pipe.tokenizer.encode("The ")
    assert pipe.generate("The ", length=8, steps=4, seed=0)[0] == pipe.tokenizer.decode(ids[0].tolist())


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_exact_resume(corpus_file: Path, tmp_path: Path, optimizer: str) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(tiny_config(corpus_file, 20, dtype="fp32", optimizer=optimizer), straight, quiet=True)

    first = train(tiny_config(corpus_file, 10, dtype="fp32", optimizer=optimizer), resumed, quiet=True)
    assert first.step == 10
    n_first = len(log_records(resumed))
    second = train(tiny_config(corpus_file, 20, dtype="fp32", optimizer=optimizer), resumed, resume=True,
                   quiet=True)
    assert second.step == 20

    # The log continues: the resumed part starts after step 10.
    records = log_records(resumed)
    loss_steps = [r["step"] for r in records if "loss" in r]
    assert loss_steps == [5, 10, 15, 20]
    marker, *continued = records[n_first:]  # a session starts with a marker naming its checkpoint
    assert marker["event"] == "resume" and marker["checkpoint"] == "step-00000010" and marker["step"] == 10
    assert all(r["step"] > 10 for r in continued)
    assert load_trainer_state(RunFolder(resumed).latest_checkpoint())["step"] == 20

    # Same data order, noise, optimizer state and LR schedule: bit-identical weights on CPU.
    a, b = RunFolder(straight).latest_checkpoint(), RunFolder(resumed).latest_checkpoint()
    for name in ("model.safetensors", "ema.safetensors"):
        if (a / name).is_file():
            wa, wb = weights(a, name), weights(b, name)
            assert wa.keys() == wb.keys()
            for key in wa:
                torch.testing.assert_close(wb[key], wa[key], rtol=0, atol=1e-6, msg=f"{name}:{key}")
    straight_losses = [r["loss"] for r in log_records(straight) if "loss" in r]
    resumed_losses = [r["loss"] for r in records if "loss" in r]
    assert resumed_losses == pytest.approx(straight_losses, rel=1e-5)


def test_keep_last(corpus_file: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny_config(corpus_file, 20, ckpt_interval=5, keep_last=1, keep_best=False), run, quiet=True)
    assert [c.name for c in RunFolder(run).checkpoints()] == ["step-00000020"]
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    assert not (run / "best.json").exists()


def test_keep_best_keeps_the_lowest_validation_through_pruning_and_resume(
        corpus_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that overfits: validation falls, then rises. The checkpoint of its lowest loss is saved though
    it falls between checkpoints, survives keep_last=1, is what RUN/best loads, and a resume remembers it."""
    import dlm.train.trainer as trainer
    from dlm.cli.train import stopped_message

    readings = iter([3.0, 2.0, 2.5, 2.7, 2.6, 1.5])
    monkeypatch.setattr(trainer, "validate", lambda state, setup: next(readings))
    run = tmp_path / "run"
    cfg = tiny_config(corpus_file, 20, eval_interval=5, ckpt_interval=20, keep_last=1)
    result = train(cfg, run, quiet=True)
    assert RunFolder(run).best_record() == {"step": 10, "val_loss": 2.0, "checkpoint": "step-00000010"}
    assert [c.name for c in RunFolder(run).checkpoints()] == ["step-00000010", "step-00000020"]
    assert dlm.load(run / "best").checkpoint.name == "step-00000010"
    assert dlm.load(run).checkpoint.name == "step-00000020"
    assert "lowest validation loss, 2.0000 nats/token, was at step 10" in stopped_message(result)
    assert f"--ckpt {run}/best" in stopped_message(result)

    cfg.train.max_steps = 30  # 2.6 at step 25 does not beat the 2.0 the resumed run remembers; 1.5 at 30 does
    train(cfg, run, resume=True, quiet=True)
    assert RunFolder(run).best_record()["step"] == 30
    assert [c.name for c in RunFolder(run).checkpoints()] == ["step-00000030"]  # the old best pruned at last
    assert "lowest" not in stopped_message(TrainResult(run, 30, 0.0, 1.5, "max_steps", cfg))
    # a fine-tune can start from the best checkpoint: its config and tokenizer come from the run
    from dlm.train.data_source import base_tokenizer
    from dlm.train.finetune import finetune_config

    tuned = finetune_config(run / "best", str(corpus_file), chat=False)
    assert tuned.preset == "finetune:run"
    assert base_tokenizer(tuned).to_json() == RunFolder(run).read_tokenizer().to_json()


def test_run_slash_best_from_the_runs_parent_is_the_local_run_not_a_hub_id(
        corpus_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--ckpt run/best` typed in the folder that holds `run` has the shape of a Hub id (user/name); it is read
    as the local run's best checkpoint, by dlm.load, DiffusionLM.from_pretrained and the CLI, with no Hub call."""
    import dlm.hub
    from dlm.cli import main
    from dlm.hub import DiffusionLM

    run = tmp_path / "run"
    train(tiny_config(corpus_file, 10, eval_interval=5, ckpt_interval=5), run, quiet=True)
    best = RunFolder(run).best_record()["checkpoint"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(dlm.hub, "hub_host_resolves", lambda: pytest.fail("run/best was taken for a Hub id"))
    assert dlm.load("run/best").checkpoint.name == best
    assert isinstance(DiffusionLM.from_pretrained("run/best"), DiffusionLM)
    assert main(["sample", "--ckpt", "run/best", "--length", "8", "--steps", "4"]) in (0, None)


def test_best_without_a_record_or_with_its_checkpoint_gone_is_a_one_line_error(corpus_file: Path,
                                                                               tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny_config(corpus_file, 10, keep_best=False), run, quiet=True)
    with pytest.raises(DlmError, match=r"records no best checkpoint .*pass the run folder"):
        dlm.load(run / "best")
    RunFolder(run).mark_best(5, 1.0)  # names a checkpoint that was never saved
    with pytest.raises(DlmError, match=r"step-00000005, is gone"):
        dlm.load(run / "best")


def test_truncated_checkpoint_is_skipped(corpus_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    train(tiny_config(corpus_file), run, quiet=True)
    older, newest = RunFolder(run).checkpoints()
    path = newest / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    assert RunFolder(run).latest_checkpoint() == older
    assert "truncated" in capsys.readouterr().err
    assert dlm.load(run).checkpoint == older
    with pytest.raises(DlmError, match="damaged"):
        dlm.load(newest)


def test_corrupted_bytes_are_detected(corpus_file: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny_config(corpus_file, 10), run, quiet=True)
    (ckpt,) = RunFolder(run).checkpoints()
    path = ckpt / "model.safetensors"
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 16] = bytes(16)  # same size, different content
    path.write_bytes(bytes(data))
    assert RunFolder(run).latest_checkpoint(quiet=True) is None
    with pytest.raises(DlmError, match="sha256"):
        dlm.load(ckpt)
    with pytest.raises(DlmError, match="no intact checkpoint"):
        dlm.load(run)


def test_resume_after_damage_uses_the_older_checkpoint(corpus_file: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny_config(corpus_file, 20), run, quiet=True)
    older, newest = RunFolder(run).checkpoints()
    (newest / "manifest.json").unlink()  # as if the write had been cut short
    result = train(tiny_config(corpus_file, 20), run, resume=True, quiet=True)
    assert result.step == 20
    records = log_records(run)
    assert [r["step"] for r in records if "loss" in r][-2:] == [15, 20]  # steps 11–20 were redone


def test_existing_run_without_resume_is_refused(corpus_file: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny_config(corpus_file, 10), run, quiet=True)
    with pytest.raises(DlmError, match="resume"):
        train(tiny_config(corpus_file, 10), run, quiet=True)


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(DlmError, match="not found"):
        dlm.load(tmp_path / "missing")
    with pytest.raises(DlmError, match="not a dlm run folder"):
        dlm.load(tmp_path)


def test_a_resumed_run_says_where_it_continues_from(corpus_file: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    train(tiny_config(corpus_file, 10), run, quiet=True)
    capsys.readouterr()
    train(tiny_config(corpus_file, 20, max_time=600.0), run, resume=True, quiet=True)
    first = capsys.readouterr().out.splitlines()[0]
    assert re.fullmatch(rf"dlm: resuming {re.escape(str(run))} from checkpoint step-00000010 \(step 10 of 20, "
                        r"0\.01M tokens seen, \d+ s trained\); \d+ s of the 600 s time budget left", first), first


def test_training_leaves_the_callers_config_alone(corpus_file: Path, tmp_path: Path) -> None:
    cfg = tiny_config(corpus_file, 2)
    before = copy.deepcopy(cfg)
    result = train(cfg, tmp_path / "run", quiet=True)
    assert cfg == before
    # The resolved copy has what the run derived: the tokenizer's vocabulary and the objective's mask.
    assert result.config.model.vocab_size == dlm.load(tmp_path / "run").tokenizer.vocab_size != before.model.vocab_size
    assert result.config.model.causal is False and result.config.train == before.train
