"""`dlm study` and `dlm sweep` end to end on tiny cells: tables, crashed cells, resuming, best config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dlm.cli import main
from dlm.presets import tiny
from dlm.train.trainer import train

TOKENS = 16 * 32 * 12  # 12 steps of the tiny preset


def study_args(out: Path, corpus: Path) -> list[str]:
    return ["study", "--out", str(out), "--preset", "tiny", "--data", str(corpus), "--budget-tokens", str(TOKENS),
            "--grid", "model.n_head=2,3", "--gen", "2", "--gen-length", "16", "--gen-steps", "4",
            "--target-se", "0.1", "eval_interval=1000"]


def test_study_trains_evaluates_reports_crashes_and_resumes(tmp_path: Path, corpus_file: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "study"
    assert main(study_args(out, corpus_file)) == 0
    state = json.loads((out / "study.json").read_text())
    status = {c["name"]: c["status"] for c in state["cells"]}
    assert status == {"ar": "done", "n_head=2": "done", "n_head=3": "crashed"}
    crashed = next(c for c in state["cells"] if c["name"] == "n_head=3")
    assert "n_head=3" in crashed["error"] and "training" in crashed["error"]  # why, not just that
    table = (out / "study.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| 2 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # status, steps, NELBO and gen-PPL
    assert cells[1] == "done" and cells[2] == "12" and float(cells[4].strip("*")) > 0 and float(cells[6]) > 1
    assert "crashed: training:" in table and (out / "report" / "report.md").is_file()
    eval_json = json.loads((out / "cells" / "n_head=2" / "eval.json").read_text())
    assert eval_json["estimator_schedule"] == "linear" and eval_json["generation"]["judge"].endswith("cells/ar")

    # Resume: done cells are not touched; a cell whose evaluation was lost is only re-evaluated.
    log = out / "cells" / "n_head=2" / "study.log"
    (out / "cells" / "n_head=2" / "eval.json").unlink()
    state["cells"][1]["status"] = "trained"
    (out / "study.json").write_text(json.dumps(state))
    before = log.read_text()
    capsys.readouterr()
    assert main(study_args(out, corpus_file)) == 0
    added = log.read_text()[len(before):]
    assert "dlm eval" in added and "dlm train" not in added
    assert "training cell 0" not in capsys.readouterr().out
    assert json.loads((out / "study.json").read_text())["cells"][1]["status"] == "done"


def test_study_refuses_other_settings_and_writes_a_slurm_array(tmp_path: Path, corpus_file: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "study"
    assert main([*study_args(out, corpus_file), "--slurm"]) == 0
    script = (out / "study.sbatch").read_text()
    assert "#SBATCH --job-name=dlm-study --array=0-2" in script and '--cell "$SLURM_ARRAY_TASK_ID"' in script
    changed = study_args(out, corpus_file)
    changed[changed.index("--budget-tokens") + 1] = "999"
    assert main(changed) == 2
    assert "holds a study with other settings" in capsys.readouterr().err


def test_a_validation_callback_can_stop_training(tmp_path: Path, corpus_file: Path) -> None:
    cfg = tiny()
    cfg.data.source, cfg.train.max_steps, cfg.train.eval_interval = str(corpus_file), 40, 5
    seen = []
    result = train(cfg, tmp_path / "run", quiet=True, on_validate=lambda step, loss: seen.append(step) or step >= 10)
    assert seen == [5, 10] and result.stopped_by == "pruned" and result.step == 10
    assert (tmp_path / "run" / "checkpoints" / "step-00000010").is_dir()  # saved where it stopped


def test_sweep_runs_trials_writes_the_best_config_and_continues(tmp_path: Path, corpus_file: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("optuna", reason="dlm sweep needs the optional optuna package")
    out = tmp_path / "sweep"
    args = ["sweep", "--out", str(out), "--preset", "tiny", "--data", str(corpus_file), "--budget-tokens",
            str(TOKENS), "--param", "train.lr=log:1e-3:1e-2", "--param", "train.batch_size=choice:8,16",
            "--eval-windows", "4", "--pruner", "none", "eval_interval=1000"]
    assert main([*args, "--trials", "2"]) == 0
    table = (out / "sweep.md").read_text()
    assert table.count("| complete |") == 2
    best = json.loads((out / "best.json").read_text())
    assert best["preset"].startswith("sweep:") and best["train"]["batch_size"] in (8, 16)
    assert main([*args, "--trials", "3"]) == 0  # continues: one more trial, not three
    assert (out / "sweep.md").read_text().count("| complete |") == 3
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["trial-0000", "trial-0001", "trial-0002"]
    # The best config trains as a preset file.
    assert main(["train", "--preset", str(out / "best.json"), "--out", str(tmp_path / "again"), "--max-steps", "2",
                 "--quiet"]) == 0
