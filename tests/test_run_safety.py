"""A run is never lost: pruning counts only intact checkpoints, resume never silently starts over,
one trainer per run folder, a full disk stops cleanly, and the edge cases of `--resume`."""

from __future__ import annotations

import errno
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import dlm
from dlm.cli import main
from dlm.errors import DlmError
from dlm.presets import tiny
from dlm.run_folder import MANIFEST, TRAINER_STATE, RunFolder, verify_checkpoint
from dlm.train.trainer import train

REPO_ROOT = Path(__file__).resolve().parents[1]


def tiny_cfg(corpus: Path, steps: int, **train_fields):
    cfg = tiny()
    cfg.data.source = str(corpus)
    cfg.train.max_steps, cfg.train.ckpt_interval, cfg.train.eval_interval, cfg.train.log_interval = steps, 5, 1000, 1
    for name, value in train_fields.items():
        setattr(cfg.train, name, value)
    return cfg


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def renumber(ckpt: Path, step: int) -> Path:
    """Move a checkpoint to another step's name (its manifest says the new step too)."""
    target = ckpt.with_name(f"step-{step:08d}")
    ckpt.rename(target)
    manifest = json.loads((target / MANIFEST).read_text())
    manifest["step"] = step
    (target / MANIFEST).write_text(json.dumps(manifest))
    return target


@pytest.fixture
def damaged_run(corpus_file: Path, tmp_path: Path) -> Path:
    """The reported folder: checkpoints step-00000500 and step-00000831 whose trainer_state.pt
    files are damaged and whose weights are intact."""
    run = tmp_path / "run"
    train(tiny_cfg(corpus_file, 10), run, quiet=True)
    older, newer = RunFolder(run).checkpoints()
    for ckpt, step in ((older, 500), (newer, 831)):
        flip_a_byte(renumber(ckpt, step) / TRAINER_STATE)
    return run


def test_resume_with_no_intact_checkpoint_stops_and_names_the_choices(damaged_run: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    log_before = (damaged_run / "log.jsonl").read_text()
    assert main(["train", "--out", str(damaged_run), "--resume", "--quiet"]) == 2
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("dlm: error:")]
    assert len(error) == 1
    assert re.search(r"no checkpoint in .* is intact: step-00000500 \(trainer_state\.pt fails its sha256 check "
                     r"\(corrupted\)\), step-00000831 .*--fresh-optimizer.*move the folder aside", error[0])
    assert [c.name for c in RunFolder(damaged_run).checkpoints()] == ["step-00000500", "step-00000831"]
    assert (damaged_run / "log.jsonl").read_text() == log_before  # no second history from step 0


def test_fresh_optimizer_continues_from_the_intact_weights_and_keeps_every_save(damaged_run: Path,
                                                                              capsys: pytest.CaptureFixture) -> None:
    fresh_start = records(damaged_run)[1]["loss"]  # step 1 of the original run: an untrained model's loss
    args = ["train", "--out", str(damaged_run), "--resume", "--fresh-optimizer", "--quiet", "max_steps=841",
            "ckpt_interval=5", "keep_last=1"]
    assert main(args) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(f"dlm: resuming {damaged_run} from the weights of checkpoint step-00000831 (step 831")
    # The damaged checkpoints are the user's to judge: kept. The new saves are pruned among themselves.
    assert [c.name for c in RunFolder(damaged_run).checkpoints()] == ["step-00000500", "step-00000831",
                                                                       "step-00000841"]
    marker = [r for r in records(damaged_run) if r.get("event")][-1]
    assert marker == {**marker, "event": "resume", "checkpoint": "step-00000831", "weights_only": True, "step": 831}
    resumed_losses = [r["loss"] for r in records(damaged_run) if "loss" in r and r["step"] > 831]
    assert resumed_losses[0] < fresh_start - 0.5  # the trained weights were loaded, not a new model


def test_pruning_never_deletes_the_checkpoint_just_written(corpus_file: Path, tmp_path: Path) -> None:
    # Intact step 5; a damaged step 831 that sorts above every new save; keep_last=1.
    run = tmp_path / "run"
    train(tiny_cfg(corpus_file, 10), run, quiet=True)
    step5, step10 = RunFolder(run).checkpoints()
    flip_a_byte(renumber(step10, 831) / "model.safetensors")
    train(tiny_cfg(corpus_file, 20, keep_last=1), run, resume=True, quiet=True)
    assert [c.name for c in RunFolder(run).checkpoints()] == ["step-00000020", "step-00000831"]
    assert RunFolder(run).latest_checkpoint(quiet=True).name == "step-00000020"


def write_checkpoint(root: Path, step: int, damage: str | None) -> None:
    folder = RunFolder(root)
    folder.save_checkpoint(step, {"model.safetensors": {"w": torch.full((4,), float(step))}}, {"step": step},
                           keep_last=0)
    ckpt = root / "checkpoints" / f"step-{step:08d}"
    if damage == "bitflip":
        flip_a_byte(ckpt / "model.safetensors")
    elif damage == "truncated":
        os.truncate(ckpt / TRAINER_STATE, 3)
    elif damage == "no-manifest":
        (ckpt / MANIFEST).unlink()
    elif damage == "binary-manifest":  # not even UTF-8
        (ckpt / MANIFEST).write_bytes(b"\x80\x04\x95 not json")


def test_after_any_save_the_newest_intact_checkpoint_survives(tmp_path: Path) -> None:
    """A property over random folders of intact and damaged checkpoints."""
    rng = random.Random(0)
    for trial in range(60):
        root = tmp_path / f"run{trial}"
        steps = rng.sample(range(1, 60), rng.randint(0, 6))
        damage = {s: rng.choice([None, None, "bitflip", "truncated", "no-manifest", "binary-manifest"]) for s in steps}
        for step in steps:
            write_checkpoint(root, step, damage[step])
        new_step, keep_last = rng.choice([s for s in range(1, 61) if s not in steps]), rng.randint(1, 3)
        run = RunFolder(root)
        run.save_checkpoint(new_step, {"model.safetensors": {"w": torch.zeros(4)}}, {"step": new_step}, keep_last)
        kept = {int(c.name.removeprefix("step-")) for c in run.checkpoints()}
        intact_steps = sorted([s for s in steps if damage[s] is None] + [new_step])
        assert max(intact_steps) in kept  # the newest intact one
        assert new_step in kept and verify_checkpoint(root / "checkpoints" / f"step-{new_step:08d}") is None
        assert all(s in kept for s in steps if damage[s] is not None)  # damaged ones: never deleted
        assert sorted(kept & set(intact_steps)) == sorted(set(intact_steps[-keep_last:]) | {new_step})


def test_a_second_trainer_is_refused_while_the_first_lives(corpus_file: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "dlm", "train", "--preset", "tiny", "--data", str(corpus_file),
                              "--out", str(run), "--quiet", "max_steps=1000000", "ckpt_interval=5"],
                             cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not RunFolder(run).latest_checkpoint(quiet=True):
            assert first.poll() is None, first.stderr.read()
            assert time.time() < deadline, "the first trainer saved no checkpoint"
            time.sleep(0.05)
        with pytest.raises(DlmError, match=rf"is being trained by process {first.pid} on .*train\.lock"):
            train(tiny_cfg(corpus_file, 10), run, resume=True, quiet=True)
        dlm.load(run)  # readers never take the lock
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # kill -9 leaves no stale lock: the kernel dropped it with the process.
    resumed_from = int(RunFolder(run).latest_checkpoint(quiet=True).name.removeprefix("step-"))
    assert train(tiny_cfg(corpus_file, resumed_from + 5), run, resume=True, quiet=True).step == resumed_from + 5


def test_a_full_disk_stops_the_run_and_keeps_the_earlier_checkpoints(corpus_file: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture) -> None:
    from dlm import run_folder

    real_save_file, calls = run_folder.save_file, []

    def save_file(state, filename, *args, **kwargs):
        calls.append(filename)
        if len(calls) > 2:  # model + EMA of the first checkpoint fit; then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", filename)
        return real_save_file(state, filename, *args, **kwargs)

    monkeypatch.setattr(run_folder, "save_file", save_file)
    run = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--data", str(corpus_file), "--out", str(run), "--quiet",
                 "--max-steps", "20", "ckpt_interval=5"]) == 2
    err = capsys.readouterr().err
    assert re.search(rf"^dlm: error: no space left on the device of {re.escape(str(run))}/checkpoints to save "
                     r"checkpoint step-00000010: it needs about [\d.]+ MB, [\d,.]+ MB are free; the earlier "
                     r"checkpoints are intact", err, flags=re.MULTILINE), err
    assert [c.name for c in RunFolder(run).checkpoints()] == ["step-00000005"]
    assert RunFolder(run).latest_checkpoint() is not None and dlm.load(run).checkpoint.name == "step-00000005"
    assert not list((run / "checkpoints").glob(".tmp-*"))  # the half-written save was removed


def test_a_restart_over_an_earlier_log_keeps_it(corpus_file: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    # A run killed before its first checkpoint left a config and a log; --resume starts over at 0.
    run = tmp_path / "run"
    train(tiny_cfg(corpus_file, 3, ckpt_interval=1000), run, quiet=True)
    for ckpt in RunFolder(run).checkpoints():  # (the stop at step 3 saved one: take it away)
        os.replace(ckpt, tmp_path / ckpt.name)
    old_log = (run / "log.jsonl").read_text()
    assert main(["train", "--out", str(run), "--resume", "--quiet", "max_steps=4"]) == 0
    captured = capsys.readouterr()
    assert "starting a new run from step 0" in captured.out and "the earlier log is kept as" in captured.err
    (kept,) = run.glob("log-before-restart-*.jsonl")
    assert kept.read_text() == old_log
    assert records(run)[0]["event"] == "start" and [r["step"] for r in records(run) if "loss" in r] == [1, 2, 3, 4]


def test_sample_refuses_zero_steps(tmp_path: Path, corpus_file: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    train(tiny_cfg(corpus_file, 5), run, quiet=True)
    assert main(["sample", "--ckpt", str(run), "--steps", "0", "--length", "8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dlm: error: steps=0 must be at least 1") and "Traceback" not in err


def test_saving_over_a_damaged_checkpoint_sets_it_aside(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_checkpoint(tmp_path, 9, "bitflip")
    RunFolder(tmp_path).save_checkpoint(9, {"model.safetensors": {"w": torch.zeros(4)}}, {"step": 9}, keep_last=2)
    (aside,) = (tmp_path / "checkpoints").glob("damaged-step-00000009-*")
    assert verify_checkpoint(aside) is not None and verify_checkpoint(tmp_path / "checkpoints/step-00000009") is None
    assert f"the damaged checkpoint step-00000009 is kept as {aside.name}" in capsys.readouterr().err
