"""Shared fixtures: a tiny model config, a small generated corpus, an isolated cache, Tiny Shakespeare."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import pytest

from dlm.model import ModelConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO_ROOT.parent / "shared/data/tinyshakespeare/input.txt"

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A small model can learn the shape of words.",
    "She sells sea shells by the sea shore.",
    "How much wood would a woodchuck chuck?",
    "The rain in Spain stays mainly in the plain.",
    "To be, or not to be: that is the question.",
    "All that glitters is not gold.",
    "The cat sat on the mat and looked at the hat.",
    "Early to bed and early to rise.",
    "Time flies like an arrow; fruit flies like a banana.",
    "A journey of a thousand miles begins with a single step.",
    "The early bird catches the worm.",
    "Where there is smoke, there is fire.",
    "Every cloud has a silver lining.",
    "Actions speak louder than words.",
    "Better late than never, but never late is better.",
    "The pen is mightier than the sword.",
    "When in Rome, do as the Romans do.",
    "Do not count your chickens before they hatch.",
    "Fortune favours the bold, and the bold write tests.",
    "An apple a day keeps the doctor away.",
    "Knowledge is power, and power is knowledge.",
    "The night is dark and full of small surprises.",
    "We walked along the river until the sun went down.",
    "He said: \"Bring me the lamp, the rope and the map!\"",
    "Numbers like 42, 7 and 1999 appear now and then.",
    "Rivers run to the sea, yet the sea is never full.",
    "Good morning, my friend; how are you today?",
    "Sing a song of sixpence, a pocket full of rye.",
    "Old ships sail slowly into the quiet harbour.",
    "The teacher wrote three words on the board.",
    "Bright stars shine over the sleeping town.",
    "Winter is cold, summer is warm, and spring is green.",
    "The baker bakes bread before the market opens.",
    "Many hands make light work.",
    "Look before you leap, and leap when you have looked.",
]


def make_corpus_text(n_lines: int = 600, seed: int = 0) -> str:
    """English-ish text: the sentences above, shuffled with a seeded RNG into short paragraphs."""
    rng = random.Random(seed)
    lines = []
    for i in range(n_lines):
        lines.append(" ".join(rng.choice(SENTENCES) for _ in range(rng.randint(1, 2))))
        if i % 7 == 6:
            lines.append("")  # paragraph break: blank lines are part of the text too
    return "\n".join(lines) + "\n"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own DLM_CACHE, so nothing reads or writes ~/.cache/dlm."""
    cache = tmp_path_factory.mktemp("dlm-cache")
    monkeypatch.setenv("DLM_CACHE", str(cache))
    monkeypatch.delenv("DLM_TINYSHAKESPEARE", raising=False)
    return cache


@pytest.fixture
def tiny_model_config() -> ModelConfig:
    return ModelConfig(vocab_size=20, n_layer=2, n_head=2, d_model=32, block_size=16)


@pytest.fixture(scope="session")
def corpus_text() -> str:
    return make_corpus_text()


@pytest.fixture
def corpus_file(tmp_path: Path, corpus_text: str) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(corpus_text, encoding="utf-8")
    return path


@pytest.fixture
def shakespeare() -> Path:
    if not SHAKESPEARE.is_file():
        pytest.skip(f"Tiny Shakespeare not found at {SHAKESPEARE}; tests that need it are skipped")
    return SHAKESPEARE


@pytest.fixture(scope="session")
def tiny_twins(tmp_path_factory: pytest.TempPathFactory, corpus_text: str) -> dict[str, Path]:
    """A tiny diffusion run and its AR twin (context 64, 40 steps), trained once for every test module
    that only needs trained runs to load, serve, export or draw. Treat them as read-only."""
    from dlm.cli import main

    root = tmp_path_factory.mktemp("twins")
    (root / "corpus.txt").write_text(corpus_text, encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:  # session-scoped: keep the training's cache out of ~/.cache
        patch.setenv("DLM_CACHE", str(root / "cache"))
        common = ["--preset", "tiny", "--data", str(root / "corpus.txt"), "--max-steps", "40", "--quiet",
                  "model.block_size=64"]
        assert main(["train", "--out", str(root / "mdlm"), *common]) == 0
        assert main(["train", "--out", str(root / "ar"), "--objective", "ar", *common]) == 0
    return {"root": root, "corpus": root / "corpus.txt", "mdlm": root / "mdlm", "ar": root / "ar"}


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch):
    """Import a bench script by name (its folder on sys.path, for its sibling imports)."""
    monkeypatch.syspath_prepend(str(REPO_ROOT / "bench"))

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO_ROOT / "bench" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, module)
        spec.loader.exec_module(module)
        return module

    return load
