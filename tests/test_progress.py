"""Progress output: a bar on a terminal, plain lines at an interval in a log; the eval bar's total;
the CUDA-probe warning of a CUDA build of torch on a machine without a GPU."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dlm.errors import DlmError
from dlm.progress import Progress, progress_mode, track


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def no_progress_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DLM_PROGRESS", raising=False)
    monkeypatch.delenv("DLM_PROGRESS_INTERVAL", raising=False)


def test_a_log_gets_a_line_every_interval_with_the_postfix_and_a_final_line() -> None:
    clock, log = FakeClock(), io.StringIO()
    bar = Progress(total=100, desc="train", unit="step", file=log, interval=30, clock=clock)
    for step in range(1, 101):  # one step a second
        clock.now = float(step)
        bar.set_postfix(loss=f"{10 / step:.3f}", lr="3.0e-04")
        bar.update(1)
    bar.close()
    text = log.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert lines == [
        "train: 30/100 step (30%), 1 step/s, 00:30 elapsed, 01:10 left | loss=0.333 lr=3.0e-04",
        "train: 60/100 step (60%), 1 step/s, 01:00 elapsed, 00:40 left | loss=0.167 lr=3.0e-04",
        "train: 90/100 step (90%), 1 step/s, 01:30 elapsed, 00:10 left | loss=0.111 lr=3.0e-04",
        "train: done, 100/100 step (100%), 1 step/s, 01:40 elapsed | loss=0.100 lr=3.0e-04",
    ]


def test_time_left_follows_the_recent_pace_not_a_slow_first_step() -> None:
    clock, log = FakeClock(), io.StringIO()
    bar = Progress(total=100, unit="step", file=log, interval=30, clock=clock)
    clock.now = 25.0  # the first step compiles
    bar.update(1)
    for step in range(2, 72):  # then two steps a second
        clock.now = 25.0 + (step - 1) / 2
        bar.update(1)
    assert log.getvalue().splitlines() == ["11/100 step (11%), 0.367 step/s, 00:30 elapsed, 04:02 left",
                                           "71/100 step (71%), 2 step/s, 01:00 elapsed, 00:14 left"]


def test_a_short_transient_loop_writes_nothing_and_a_count_without_total_reads_plainly() -> None:
    clock, log = FakeClock(), io.StringIO()
    with Progress(desc="tokenizing", unit="tok", unit_scale=True, leave=False, file=log, interval=30,
                  clock=clock) as bar:
        clock.now = 5.0
        bar.update(1_200_000)
    assert log.getvalue() == ""
    with Progress(desc="tokenizing", unit="tok", unit_scale=True, leave=False, file=log, interval=30,
                  clock=clock) as bar:
        clock.now += 40
        bar.update(2_500_000)
    assert log.getvalue().splitlines() == ["tokenizing: 2.50M tok, 62.5k tok/s, 00:40 elapsed",
                                           "tokenizing: done, 2.50M tok, 62.5k tok/s, 00:40 elapsed"]


def test_the_mode_follows_the_stream_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert progress_mode(io.StringIO()) == "lines" and progress_mode(Terminal()) == "bar"
    monkeypatch.setenv("DLM_PROGRESS", "bar")
    assert progress_mode(io.StringIO()) == "bar"
    assert progress_mode(io.StringIO(), "lines") == "lines"  # an explicit mode wins
    monkeypatch.setenv("DLM_PROGRESS", "loud")
    with pytest.raises(DlmError, match="DLM_PROGRESS='loud'"):
        progress_mode(io.StringIO())


def test_off_writes_no_progress_but_still_the_messages(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("DLM_PROGRESS", "off")
    log = io.StringIO()
    bar = Progress(total=3, file=log, interval=0)
    bar.update(3)
    bar.write("step 3: val 1.23")
    bar.close()
    assert log.getvalue() == "" and capsys.readouterr().out == "step 3: val 1.23\n"


def test_the_interval_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DLM_PROGRESS_INTERVAL", "0")
    log = io.StringIO()
    assert list(track(range(3), desc="passes", file=log, clock=FakeClock())) == [0, 1, 2]
    assert [line.split(",")[0] for line in log.getvalue().splitlines()] == [
        "passes: 1/3 it (33%)", "passes: 2/3 it (67%)", "passes: 3/3 it (100%)", "passes: done"]
    monkeypatch.setenv("DLM_PROGRESS_INTERVAL", "soon")
    with pytest.raises(DlmError, match="DLM_PROGRESS_INTERVAL"):
        Progress(file=log)


def test_a_terminal_gets_the_tqdm_bar_and_its_total_can_change() -> None:
    screen = Terminal()
    bar = Progress(total=200, desc="eval passes", file=screen)
    bar.update(1)
    bar.total = 5
    bar.update(1)
    bar.close()
    assert "\r" in screen.getvalue() and "2/5" in screen.getvalue()


@pytest.mark.parametrize(("passes", "mc_se", "expected"), [
    (2, 0.02, 8),      # 2 · (0.02 / 0.01)² = 8
    (4, 0.0101, 5),    # just above the target: one more pass, not the cap
    (2, 0.005, 4),     # already below the target: min_passes
    (5, 0.005, 5),     # below the target after min_passes: done now
    (2, 1.0, 200),     # far off: the cap
    (3, float("nan"), 200),
])
def test_passes_needed_scales_with_the_squared_standard_error_ratio(passes: int, mc_se: float,
                                                                    expected: int) -> None:
    from dlm.eval.likelihood import passes_needed

    assert passes_needed(passes, mc_se, target_se=0.01, min_passes=4, max_passes=200) == expected


def test_a_training_log_holds_lines_not_bars(corpus_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture) -> None:
    from dlm.cli import main

    monkeypatch.setenv("DLM_PROGRESS_INTERVAL", "0")  # a line per step; the interval itself is tested above
    assert main(["train", "--preset", "tiny", "--data", str(corpus_file), "--out", str(tmp_path / "run"),
                 "--max-steps", "12"]) == 0
    err = capsys.readouterr().err  # not a terminal under pytest
    assert "\r" not in err
    steps = [line for line in err.splitlines() if line.startswith("train: ")]
    expected = [f"train: {k}/12" for k in range(1, 13)] + ["train: done, 12/12"]
    assert [line.split(" step")[0] for line in steps] == expected
    assert "loss=" not in steps[8] and all(k in steps[9] for k in ("loss=", "tok_s=", "lr=", "left"))  # logged at 10


def test_compiling_silences_only_the_cuda_probe_warning() -> None:
    """A CUDA build of torch without a GPU warns when inductor first imports torch.utils.cpp_extension
    (to build the CPU kernels of a compiled model's first forward). The CPU build here never does, so
    the script imports that module as such a build would, before and after dlm compiles a model."""
    script = "\n".join([
        "import importlib, logging, sys, torch",
        "from dlm.runtime import compile_model",
        "def import_cpp_extension():",
        "    saved = torch.version.cuda, torch.cuda._is_compiled, torch.cuda.is_available",
        "    torch.version.cuda = '12.4'",
        "    torch.cuda._is_compiled, torch.cuda.is_available = lambda: True, lambda: False",
        "    sys.modules.pop('torch.utils.cpp_extension', None)",
        "    importlib.import_module('torch.utils.cpp_extension')",
        "    torch.version.cuda, torch.cuda._is_compiled, torch.cuda.is_available = saved",
        "import_cpp_extension()",
        "print('-- compile_model --', file=sys.stderr, flush=True)",
        "compile_model(torch.nn.Linear(2, 2), 'yes', torch.device('cpu'))",  # lazy: nothing compiles yet
        "import_cpp_extension()",
        "logging.getLogger('torch.utils.cpp_extension').warning('another warning')",
    ])
    env = {**os.environ, "CUDA_HOME": sys.prefix}  # any folder that exists
    err = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stderr
    before, after = err.split("-- compile_model --")
    assert "No CUDA runtime is found" in before  # the warning, reproduced
    assert "No CUDA runtime is found" not in after and "another warning" in after


def test_the_filter_drops_only_that_message(caplog: pytest.LogCaptureFixture) -> None:
    from dlm.runtime import _not_the_cuda_probe, quiet_cuda_probe

    quiet_cuda_probe()
    quiet_cuda_probe()  # once is enough: no second filter
    logger = logging.getLogger("torch.utils.cpp_extension")
    assert logger.filters.count(_not_the_cuda_probe) == 1
    with caplog.at_level(logging.WARNING):
        logger.warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/usr/local/cuda")
        logger.warning("something else")
    assert [r.getMessage() for r in caplog.records] == ["something else"]
