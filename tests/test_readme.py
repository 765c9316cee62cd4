"""The README's quick start runs as written, on the tiny preset, so the README cannot drift.

The `dlm` commands of the README's set-up section are read from the file itself and run in order
in an empty folder, on a small generated corpus standing in for Tiny Shakespeare (through
DLM_TINYSHAKESPEARE, exactly as an offline user would point dlm at a local copy). The only
rewrites: the tiny preset instead of the 10-minute one, and a few training steps.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from dlm.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def quick_start_commands() -> list[str]:
    """Every `dlm ...` command in the bash blocks of the README's '## Set-up' section, in order."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL):
        for line in block.splitlines():
            for part in line.split("  #", 1)[0].split("&&"):
                if part.strip().startswith("dlm "):
                    commands.append(part.strip())
    return commands


def for_the_tiny_preset(command: str) -> list[str]:
    argv = shlex.split(command.replace("shakespeare-char-cpu", "tiny"))[1:]
    if argv[0] == "train":
        argv += ["--preset", "tiny", "--max-steps", "30", "--quiet", "model.block_size=256"]
    return argv


def test_the_quick_start_names_the_whole_path() -> None:
    verbs = [shlex.split(c)[1] for c in quick_start_commands()]
    assert verbs == ["train", "sample", "eval", "train", "eval"]


def test_the_quick_start_runs(tmp_path: Path, corpus_file: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DLM_TINYSHAKESPEARE", str(corpus_file))
    outputs = []
    for command in quick_start_commands():
        assert main(for_the_tiny_preset(command)) == 0, command
        outputs.append(capsys.readouterr().out)
    train_mdlm, sample, eval_mdlm, train_ar, eval_ar = outputs
    assert "run saved in runs/tiny-mdlm" in train_mdlm and "run saved in runs/tiny-ar" in train_ar
    assert len(sample.rstrip("\n")) >= 256  # 256 generated characters
    assert "NELBO (upper bound on NLL) on val" in eval_mdlm and (tmp_path / "val.json").is_file()
    assert "NLL (exact) on val" in eval_ar
