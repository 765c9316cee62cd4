"""End to end: short training runs must beat the best context-free model (the unigram entropy)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import dlm
from dlm.data.config import DataConfig
from dlm.data.loader import eval_windows
from dlm.data.shards import prepare_corpus
from dlm.eval.likelihood import evaluate_likelihood
from dlm.presets import tiny
from dlm.train.trainer import train


def unigram_entropy(tokens: np.ndarray) -> float:
    """Entropy (nats/token) of the token frequencies: what a model that ignores context achieves."""
    counts = np.bincount(np.asarray(tokens))
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def val_nelbo(run: Path, max_windows: int = 512) -> dict:
    pipe = dlm.load(run)
    corpus = prepare_corpus(pipe.config.data, tokenizer=pipe.tokenizer)
    windows = eval_windows(corpus.split("val"), pipe.config.model.block_size)[:max_windows]
    return evaluate_likelihood(pipe.model, windows, pipe.tokenizer.special, causal=False, block=pipe.diffusion_block,
                               device=torch.device("cpu"),
                               dtype=torch.float32, target_se=0.02, progress=False)


def test_diffusion_beats_unigram_on_generated_corpus(corpus_file: Path, tmp_path: Path) -> None:
    cfg = tiny()
    cfg.data.source = str(corpus_file)
    cfg.train.max_steps, cfg.train.eval_interval = 600, 1000  # ~5 s on one core
    result = train(cfg, tmp_path / "run", quiet=True)
    entropy = unigram_entropy(prepare_corpus(DataConfig(source=str(corpus_file))).split("train"))
    assert 2.8 < entropy < 3.4  # English-ish characters
    nelbo = val_nelbo(tmp_path / "run")
    assert result.val_loss is not None
    assert nelbo["nats_per_token"] < entropy - 0.3, (nelbo, entropy)


def test_diffusion_learns_tiny_shakespeare(shakespeare: Path, tmp_path: Path) -> None:
    cfg = tiny()
    cfg.data.source = str(shakespeare)
    # A step count, not a time budget: a busy or slow machine then takes longer, never learns less.
    cfg.train.max_steps, cfg.train.max_time, cfg.train.eval_interval = 1000, 0.0, 1_000_000
    result = train(cfg, tmp_path / "run", quiet=True)
    assert result.stopped_by == "max_steps"
    entropy = unigram_entropy(prepare_corpus(DataConfig(source=str(shakespeare))).split("train"))
    assert entropy == pytest.approx(3.31, abs=0.02)
    nelbo = val_nelbo(tmp_path / "run")
    assert nelbo["nats_per_token"] < entropy - 0.3, (nelbo, entropy, result.step)
