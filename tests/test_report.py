"""`dlm report`: tables and plots from hand-written run folders and eval files, and from a real tiny run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dlm.cli import main
from dlm.presets import get_preset
from dlm.viz.report import newest_stretch, read_log

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(folder: Path, objective: str, losses: dict[int, float], val: dict[int, float],
              extra_lines: list[str] = (), tied: bool = False) -> Path:
    """A run folder as the trainer leaves it: config.json, log.jsonl and one checkpoint's weights."""
    cfg = get_preset("tiny").to_dict()
    cfg["train"]["objective"] = objective
    cfg["model"].update(causal=objective == "ar", tie_weights=tied, vocab_size=10, d_model=4)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    lines = [json.dumps({"step": s, "loss": v, "lr": 1e-3, "grad_norm": 0.5, "tokens_per_s": 1000.0,
                         "tokens_seen": s * 512, "elapsed_s": s / 10, "max_memory_mb": 100.0})
             for s, v in losses.items()]
    lines += [json.dumps({"step": s, "val_loss": v, "elapsed_s": s / 10}) for s, v in val.items()]
    lines.sort(key=lambda line: json.loads(line)["step"])
    (folder / "log.jsonl").write_text("\n".join([*lines, *extra_lines]) + "\n")
    ckpt = folder / "checkpoints" / "step-00000050"
    ckpt.mkdir(parents=True)
    weights = {"embed.weight": torch.zeros(10, 4), "head.weight": torch.zeros(10, 4), "blocks.0.w": torch.zeros(4, 4)}
    save_file(weights, str(ckpt / "model.safetensors"))
    return folder


def likelihood(run: Path, kind: str, nats: float, **more) -> dict:
    bound = kind == "nelbo_bound"
    return {"kind": kind, "nats_per_token": nats, "bits_per_token": nats / 0.6931471805599453,
            "perplexity": None if bound else 2.0, "perplexity_bound": 3.5 if bound else None,
            "mc_standard_error": 0.0123 if bound else 0.0, "window_standard_error": 0.0456, "passes": 8 if bound else 1,
            "windows": 12, "window_length": 32, "split": "val", "tokenizer": "char", "weights": "ema",
            "checkpoint": str(run / "checkpoints" / "step-00000050"), **more}


def generation(sampler: str, steps: int, gen_ppl: float, entropy: float, judge: str = "runs/ar", **more) -> dict:
    """A `generation` dict as dlm eval writes it (files from before HF judges have no gen_ppl_unit)."""
    return {"samples": 8, "length": 32, "sampler": sampler, "steps": steps, "temperature": 1.0,
            "unigram_entropy": entropy, "distinct_1": 0.1, "distinct_2": 0.5, "distinct_3": 0.8, "distinct_4": 0.9,
            "self_bleu": 0.25, "tokens_per_s": 1234.5, "forward_passes": steps, "gen_ppl": gen_ppl, "judge": judge,
            **more}


@pytest.fixture
def fake_runs(tmp_path: Path) -> tuple[Path, Path, list[Path]]:
    # Run A was resumed from step 20 after logging 30 and 40: the second 30 and 40 replace the first.
    resumed = [{"step": 30, "loss": 2.2}, {"step": 40, "loss": 2.0}, {"step": 50, "loss": 1.8765, "tokens_seen": 25600},
               {"step": 50, "val_loss": 1.9876}]
    mdlm = write_run(tmp_path / "runs" / "mdlm", "mdlm", {10: 3.0, 20: 2.5, 30: 9.9, 40: 9.9}, {20: 2.6}, tied=True,
                     extra_lines=[*map(json.dumps, resumed), '{"step": 60, "lo'])  # torn by a kill
    ar = write_run(tmp_path / "runs" / "ar", "ar", {10: 2.8, 20: 2.1, 30: 1.7}, {30: 1.75})
    single = tmp_path / "mdlm-val.json"
    single.write_text(json.dumps(likelihood(mdlm, "nelbo_bound", 1.2345,
                                            generation=generation("confidence", 32, 40.0, 3.1))))
    sweep = tmp_path / "mdlm-steps.json"  # a list: one result per sampling-step count
    sweep.write_text(json.dumps([likelihood(mdlm, "nelbo_bound", 1.2345, generation=generation("confidence", s, p, e))
                                 for s, p, e in ((4, 90.0, 2.5), (8, 60.0, 2.8), (16, 45.0, 3.0))]))
    hf = tmp_path / "ar-val.json"
    hf.write_text(json.dumps(likelihood(ar, "exact_nll", 1.1111, generation=generation(
        "autoregressive", 32, 77.7, 3.3, judge="models/gpt2", gen_ppl_unit="per judge token", judge_kind="hf",
        mauve=0.812))))
    return mdlm, ar, [single, sweep, hf]


def table_row(markdown: str, *cells: str) -> str:
    """The one table row that starts with these cells."""
    prefix = "| " + " | ".join(cells) + " |"
    rows = [line for line in markdown.splitlines() if line.startswith(prefix)]
    assert len(rows) == 1, (prefix, markdown)
    return rows[0]


def test_report_tables_and_plots(fake_runs: tuple[Path, Path, list[Path]], tmp_path: Path,
                                 capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install 'dlm[plot]')")
    mdlm, ar, evals = fake_runs
    out = tmp_path / "report"
    assert main(["report", str(mdlm), str(ar), "--eval", *map(str, evals[:2]), "--eval", str(evals[2]),
                 "--out", str(out)]) == 0
    assert "report written to" in capsys.readouterr().out
    md = (out / "report.md").read_text()

    run_a = table_row(md, "mdlm", "mdlm", "tiny")
    # Tied: embed and head counted once (40 + 16); the newest stretch after the resume; the torn line skipped.
    assert "| 56 |" in run_a and "| 50 |" in run_a and "25,600" in run_a
    assert "1.8765" in run_a and "1.9876" in run_a and "9.9" not in run_a and "nats/char" in run_a
    assert "| 96 |" in table_row(md, "ar", "ar", "tiny")  # not tied: 40 + 40 + 16
    assert "Unreadable log lines skipped: `mdlm` (1)" in md

    nelbo = [line for line in md.splitlines() if "NELBO (bound)" in line and line.startswith("| mdlm")]
    assert len(nelbo) == 4 and "1.2345 nats/char" in nelbo[0] and "0.0123" in nelbo[0] and "0.0456" in nelbo[0]
    assert "≤ 3.500" in nelbo[0] and "12 × 32" in nelbo[0]
    exact = table_row(md, "ar", "50", "val", "exact NLL")
    assert "1.1111 nats/char" in exact and "1.6030 bits/char" in exact

    quality = table_row(md, "ar", "autoregressive", "32")
    assert "77.700 per judge token" in quality and "models/gpt2" in quality and "0.812" in quality
    assert "0.100/0.500/0.800/0.900" in quality and "1,234" in quality
    assert "40.000 per dlm token" in table_row(md, "mdlm", "confidence", "32")
    assert [line.split(" | ")[2] for line in md.splitlines() if line.startswith("| mdlm | confidence")] == \
        ["4", "8", "16", "32"]

    for name in ("loss.png", "quality_vs_steps.png"):
        assert f"]({name})" in md
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
        import matplotlib.image

        assert matplotlib.image.imread(out / name).ndim == 3
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_report_without_matplotlib(fake_runs: tuple[Path, Path, list[Path]], tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    for name in ("matplotlib", "matplotlib.pyplot"):
        monkeypatch.setitem(sys.modules, name, None)  # importing it now raises ImportError
    mdlm, ar, evals = fake_runs
    out = tmp_path / "no-plots"
    assert main(["report", str(mdlm), str(ar), "--eval", str(evals[0]), "--out", str(out)]) == 0
    assert "plots skipped" in capsys.readouterr().out
    md = (out / "report.md").read_text()
    assert "Plots skipped" in md and "pip install 'dlm[plot]'" in md
    assert not list(out.glob("*.png"))


def test_resumed_log_keeps_the_newest_stretch(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    steps = (10, 20, 30, 20, 30, 40)  # resumed from step 10 after logging 20 and 30
    log.write_text("".join(json.dumps({"step": s, "loss": float(i)}) + "\n" for i, s in enumerate(steps)) + "{torn")
    records, bad = read_log(log)
    assert bad == 1 and len(records) == 6
    assert [(r["step"], r["loss"]) for r in newest_stretch(records)] == [(10, 0), (20, 3), (30, 4), (40, 5)]


@pytest.mark.parametrize("problem", ["missing run", "not a run", "bad json", "missing eval", "no input"])
def test_one_line_errors(problem: str, fake_runs: tuple[Path, Path, list[Path]], tmp_path: Path,
                         capsys: pytest.CaptureFixture) -> None:
    mdlm = fake_runs[0]
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"kind": "exact_nll", ')
    (tmp_path / "empty").mkdir()
    args, fragment = {
        "missing run": ([str(tmp_path / "nope")], "not found"),
        "not a run": ([str(tmp_path / "empty")], "not a dlm run folder"),
        "bad json": ([str(mdlm), "--eval", str(bad_json)], "not readable JSON"),
        "missing eval": ([str(mdlm), "--eval", str(tmp_path / "none.json")], "not found"),
        "no input": ([], "nothing to report"),
    }[problem]
    assert main(["report", *args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dlm: error:") and fragment in err and "Traceback" not in err


def test_report_of_a_real_tiny_run(corpus_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run, evaluation = tmp_path / "tiny-mdlm", tmp_path / "eval.json"
    assert main(["train", "--preset", "tiny", "--data", str(corpus_file), "--out", str(run), "--max-steps", "10",
                 "--quiet"]) == 0
    assert main(["eval", "--ckpt", str(run), "--max-passes", "2", "--quiet", "--gen", "2", "--gen-length", "8",
                 "--json", str(evaluation)]) == 0
    assert main(["report", str(run), "--eval", str(evaluation), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "report.md").read_text()
    row = table_row(md, "tiny-mdlm", "mdlm", "tiny")
    assert "| 10 |" in row and "2×2×64, context 32" in row and "| — |" not in row  # parameters known
    assert table_row(md, "tiny-mdlm", "10", "val", "NELBO (bound)")
    assert table_row(md, "tiny-mdlm", "random", "8")  # the default sampler
