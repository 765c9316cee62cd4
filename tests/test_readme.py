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
from dlm.presets import get_preset

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
        if "--objective" not in argv:  # what the README's default preset trains
            argv += ["--objective", get_preset("shakespeare-char-cpu").train.objective]
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
    train_bd3, sample, eval_bd3, train_ar, eval_ar = outputs
    assert "run saved in runs/tiny-bd3" in train_bd3 and "run saved in runs/tiny-ar" in train_ar
    assert len(sample.rstrip("\n")) >= 256  # 256 generated characters
    assert "NELBO, blocks of 4 (upper bound on NLL) on val" in eval_bd3 and (tmp_path / "val.json").is_file()
    assert "NLL (exact) on val" in eval_ar


def python_blocks(page: Path = README) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_the_python_example_runs(tmp_path: Path, corpus_text: str, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture) -> None:
    """The README's Python block, on a tiny run standing in for the 10-minute one."""
    (block,) = python_blocks()
    corpus = tmp_path / "corpus.txt"  # every character the block's prompts use
    corpus.write_text(corpus_text + "".join(sorted(set(block))), encoding="utf-8")
    run = tmp_path / "runs" / "shakespeare-char-cpu-bd3"
    assert main(["train", "--preset", "tiny", "--data", str(corpus), "--out", str(run), "--max-steps", "20",
                 "--quiet", "model.block_size=256", "--objective", "bd3", "--block-size", "4"]) == 0
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})  # noqa: S102 (our own README)
    printed = capsys.readouterr().out
    # 16 steps shared among the blocks, at least one each (a block model may take one more)
    assert 16 <= printed.count("committed") <= 17 and "ROMEO:" in printed
