"""Training that survives real runs: exact resume, signals, kill -9, accumulation, EMA, NaN guard, DDP."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dlm.presets import tiny
from dlm.run_folder import RunFolder, load_trainer_state, verify_checkpoint
from dlm.train.ema import EMA
from dlm.train.trainer import train

REPO_ROOT = Path(__file__).resolve().parents[1]


def tiny_cfg(corpus: Path, steps: int, **train_overrides):
    cfg = tiny()
    cfg.data.source = str(corpus)
    cfg.train.max_steps, cfg.train.dtype, cfg.train.ckpt_interval = steps, "fp32", 10
    cfg.train.eval_interval, cfg.train.log_interval = 1000, 1
    for key, value in train_overrides.items():
        setattr(cfg.train, key, value)
    return cfg


def losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(RunFolder(run).latest_checkpoint() / "model.safetensors"))


@pytest.mark.parametrize("objective", ["mdlm", "ar"])
def test_resume_gives_the_same_loss_curve_bit_for_bit(corpus_file: Path, tmp_path: Path, objective: str):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(tiny_cfg(corpus_file, 20, objective=objective), straight, quiet=True)
    train(tiny_cfg(corpus_file, 10, objective=objective), resumed, quiet=True)
    train(tiny_cfg(corpus_file, 20, objective=objective), resumed, resume=True, quiet=True)
    assert losses(straight) == losses(resumed)  # every logged step, exactly
    a, b = final_weights(straight), final_weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert load_trainer_state(RunFolder(resumed).latest_checkpoint())["step"] == 20


def test_gradient_accumulation_matches_the_large_batch(corpus_file: Path, tmp_path: Path):
    # The AR objective draws no noise and the loader draws the same windows whether a step's batch
    # comes whole or in four micro-batches, so both runs see the same tokens: only the trainer's
    # normalisation could tell them apart. Adam hides a gradient's scale, but the logged (pre-clip)
    # gradient norm does not, so a micro-batch divided by its own tokens would show 4× here.
    def run(name: str, grad_accum: int) -> list[dict]:
        cfg = tiny_cfg(corpus_file, 6, objective="ar", batch_size=16, grad_accum=grad_accum, ema_decay=0.0)
        train(cfg, tmp_path / name, quiet=True)
        return [r for r in map(json.loads, (tmp_path / name / "log.jsonl").read_text().splitlines()) if "loss" in r]

    whole, accumulated = run("whole", 1), run("accumulated", 4)
    assert [r["step"] for r in whole] == [r["step"] for r in accumulated] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(whole, accumulated, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    a, b = final_weights(tmp_path / "whole"), final_weights(tmp_path / "accumulated")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_ema_update_arithmetic():
    model = torch.nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model)  # first update: decay min(0.9, 2/11)
    d = 2 / 11
    torch.testing.assert_close(ema.shadow["weight"], torch.full((2, 3), d * 1.0 + (1 - d) * 3.0))
    for _ in range(200):
        ema.update(model)
    torch.testing.assert_close(ema.shadow["weight"], torch.full((2, 3), 3.0))
    with ema.swapped_in(model):
        model.weight.data.fill_(-1)  # changes inside the swap are discarded
    assert torch.all(model.weight == 3.0)


def test_nan_guard_skips_bad_steps_then_stops_naming_them(corpus_file: Path, tmp_path: Path, monkeypatch):
    from dlm import objectives
    from dlm.errors import DlmError

    real = objectives.make_objective

    def poisoned(*args, **kwargs):
        objective = real(*args, **kwargs)

        def run(model, x, gen, **kwargs):
            out = objective(model, x, gen, **kwargs)
            out.nll_sum = out.nll_sum * float("nan")
            return out
        return run

    monkeypatch.setattr("dlm.train.trainer.make_objective", poisoned)
    with pytest.raises(DlmError, match=r"3 steps in a row had non-finite .*\(steps 0–2\)"):
        train(tiny_cfg(corpus_file, 20, max_bad_steps=3), tmp_path / "run", quiet=True)
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "skipped" in r] == [0, 1, 2]


def _launch(args: list[str], env_extra: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "dlm", "train", *args], env=env, cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(run: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not RunFolder(run).checkpoints():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])
def test_a_stop_signal_saves_and_exits_zero(corpus_file: Path, tmp_path: Path, sig: signal.Signals):
    run = tmp_path / "run"
    proc = _launch(["--preset", "tiny", "--data", str(corpus_file), "--out", str(run), "--quiet",
                    "max_steps=1000000", "ckpt_interval=50"])
    _wait_for_checkpoint(run, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert f"({sig.name})" in out
    state = load_trainer_state(RunFolder(run).latest_checkpoint())
    assert f"stopped at step {state['step']} " in out  # the step it stopped at was saved


KILL_ARGS = ["--preset", "tiny", "--quiet", "--max-steps", "10", "dtype=fp32", "ckpt_interval=2", "keep_last=2",
             "eval_interval=1000", "compile=no"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, corpus_text: str) -> tuple[Path, dict]:
    """The corpus and the final weights of the run the killed ones must reproduce."""
    root = tmp_path_factory.mktemp("uninterrupted")
    corpus = root / "corpus.txt"
    corpus.write_text(corpus_text, encoding="utf-8")
    from dlm.cli import main

    assert main(["train", "--out", str(root / "run"), "--data", str(corpus), *KILL_ARGS]) == 0
    return corpus, final_weights(root / "run")


@pytest.mark.parametrize("point", ["weights-half", "trainer-state", "before-manifest", "after-rename", "mid-prune"])
def test_kill_9_during_a_save_loses_nothing_saved_before(uninterrupted, tmp_path: Path, point: str):
    """SIGKILL at an exact moment of the third save (after steps 2 and 4 were saved): every folder
    under a checkpoint's name is intact, the newest is the last complete save, and resuming from it
    ends with exactly the weights of a run that was never interrupted."""
    from dlm.cli import main

    corpus, expected = uninterrupted
    killed = tmp_path / "killed"
    args = ["train", "--out", str(killed), "--data", str(corpus), *KILL_ARGS]
    harness = [sys.executable, str(REPO_ROOT / "tests" / "fault_injection.py"), "--kill-at", point, "--at-save", "3"]
    # Same thread count as this process: the resumed weights must match bit for bit.
    died = subprocess.run([*harness, "--", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True)
    assert died.returncode == -signal.SIGKILL, died.stderr
    run = RunFolder(killed)
    assert all(verify_checkpoint(ckpt) is None for ckpt in run.checkpoints())
    newest = "step-00000006" if point in ("after-rename", "mid-prune") else "step-00000004"
    assert run.latest_checkpoint().name == newest
    assert main([*args, "--resume"]) == 0
    assert [c.name for c in run.checkpoints()] == ["step-00000008", "step-00000010"]
    resumed = final_weights(killed)
    assert all(torch.equal(expected[k], resumed[k]) for k in expected)
    assert not list((killed / "checkpoints").glob(".tmp-*"))  # the torn leftovers were cleared


@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun not on PATH")
@pytest.mark.parametrize("mode, port", [("ddp", "29731"),
                                        pytest.param("fsdp", "29733", marks=pytest.mark.slow)])  # 2 torchruns each
def test_two_processes_match_single_process_and_resume_in_one(corpus_file: Path, tmp_path: Path, mode: str,
                                                               port: str):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # The AR objective has no masking noise, so 2 ranks must match 1 process (same global batches).
    # A constant LR keeps the update independent of max_steps, so a 20-step run is a prefix of a 30-step one.
    args = ["--preset", "tiny", "--data", str(corpus_file), "--quiet", "--objective", "ar", "dtype=fp32",
            "log_interval=5", "eval_interval=1000", "ckpt_interval=10", "warmup_steps=0", "min_lr_ratio=1"]
    sharded, single = tmp_path / mode, tmp_path / "single"
    subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", port, "-m", "dlm", "train",
                    "--out", str(sharded), "--max-steps", "20", *(["--fsdp"] if mode == "fsdp" else []), *args],
                   env=env, cwd=REPO_ROOT, check=True, capture_output=True)
    # EMA saved (gathered from the shards under FSDP).
    assert (RunFolder(sharded).latest_checkpoint() / "ema.safetensors").is_file()
    subprocess.run([sys.executable, "-m", "dlm", "train", "--out", str(single), "--max-steps", "30", *args],
                   env=env, cwd=REPO_ROOT, check=True, capture_output=True)
    multi, plain = losses(sharded), losses(single)
    for step in (5, 10, 15, 20):
        assert multi[step] == pytest.approx(plain[step], abs=1e-4)
    # Resume the 2-rank run in one process: the data stream does not depend on the number of ranks,
    # and FSDP's name-keyed optimizer state converts to the single-process format.
    subprocess.run([sys.executable, "-m", "dlm", "train", "--out", str(sharded), "--resume", "--max-steps", "30",
                    "--quiet"], env=env, cwd=REPO_ROOT, check=True, capture_output=True)
    resumed = losses(sharded)
    for step in (25, 30):
        assert resumed[step] == pytest.approx(plain[step], abs=1e-4)



@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun not on PATH")
def test_two_processes_train_the_cpu_presets_block_recipe(corpus_file: Path, tmp_path: Path) -> None:
    # The README's default objective: blocks of 4, a token-causal clean copy with a next-token loss.
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    run = tmp_path / "bd3"
    subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29735", "-m", "dlm", "train",
                    "--out", str(run), "--preset", "tiny", "--data", str(corpus_file), "--quiet", "--max-steps", "4",
                    "--objective", "bd3", "dtype=fp32", "model.clean_causal=true", "diffusion.clean_ar_weight=1",
                    "log_interval=2", "ckpt_interval=4"],
                   env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=REPO_ROOT, check=True, capture_output=True)
    logged = losses(run)
    assert set(logged) >= {2, 4} and all(math.isfinite(v) for v in logged.values())
    assert (RunFolder(run).latest_checkpoint() / "model.safetensors").is_file()


@pytest.mark.parametrize("preset, params_millions", [  # full-size models: ~10 s each on 2 cores
    ("owt-124m", 123.55), pytest.param("fineweb-124m", 123.55, marks=pytest.mark.slow),
    pytest.param("joey-170m", 167.80, marks=pytest.mark.slow)])
def test_large_presets_count_their_parameters_and_train_a_step_on_cpu(preset, params_millions, corpus_file,
                                                                      tmp_path):
    from dlm.model import Transformer
    from dlm.presets import get_preset

    cfg = get_preset(preset)
    with torch.device("meta"):  # count without allocating
        assert Transformer(cfg.model).num_params() / 1e6 == pytest.approx(params_millions, abs=0.01)
    # The real model (full width, depth and context) takes one optimizer step at batch 1 on CPU.
    cfg.data.source, cfg.data.tokenizer, cfg.data.val_fraction = str(corpus_file), "char", 0.1
    cfg.train.batch_size = cfg.train.grad_accum = 1
    cfg.train.max_steps, cfg.train.eval_batches, cfg.train.compile = 1, 1, "no"
    result = train(cfg, tmp_path / preset, quiet=True)
    assert result.step == 1 and math.isfinite(result.last_loss) and result.last_loss > 0


def test_a_second_sigint_aborts_at_once():
    from dlm.train.trainer import StopFlag

    with StopFlag() as stop:
        stop._handle(signal.SIGINT, None)
        assert stop.reason == "SIGINT"  # first: finish the step, save, exit 0
        with pytest.raises(KeyboardInterrupt):
            stop._handle(signal.SIGINT, None)
