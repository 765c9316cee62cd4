"""The terminal animations, captured through a pseudo-terminal: `dlm sample --animate` redraws in
place, and `dlm race` draws both models side by side to the end."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def twins(tiny_twins) -> tuple[Path, Path]:
    return tiny_twins["mdlm"], tiny_twins["ar"]


def run_in_pty(args: list[str]) -> str:
    """Run `python -m dlm ARGS` with its stdout on a pseudo-terminal; return everything it drew."""
    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": "100", "LINES": "30", "TERM": "xterm-256color"}
    process = subprocess.Popen([sys.executable, "-m", "dlm", *args], stdout=follower, stderr=follower,
                               stdin=subprocess.DEVNULL, cwd=REPO_ROOT, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert process.wait(timeout=120) == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode("utf-8", errors="replace")


def test_sample_animate_redraws_in_place(twins) -> None:
    out = run_in_pty(["sample", "--ckpt", str(twins[0]), "--animate", "--length", "24", "--steps", "6",
                      "--prompt", "The "])
    frames = re.findall(r"\[step +(\d+)\] (.*)", out)
    assert [int(step) for step, _ in frames] == [1, 2, 3, 4, 5, 6]
    assert out.count("\x1b[J") == 6 and out.count("\x1b[1F") == 5  # each frame drawn over the last
    assert "░" in frames[0][1] and "░" not in frames[-1][1] and frames[-1][1].startswith("The ")


def test_race_draws_both_models_to_the_end(twins) -> None:
    out = run_in_pty(["race", "--diffusion", str(twins[0]), "--ar", str(twins[1]), "--prompt", "The ",
                      "--length", "24", "--steps", "8"])
    assert "diffusion" in out and "autoregressive twin" in out
    assert re.search(r"diffusion: 24 tokens in 8 steps, 8 forward passes", out)
    assert re.search(r"autoregressive twin: 24 tokens in 24 steps", out)
    assert out.count("step ") > 4  # redrawn as it went, not only at the end
