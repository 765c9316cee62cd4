"""nats/char for any tokenizer: the characters token windows spell, and the per-char figures."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from dlm.cli import main
from dlm.eval.characters import add_per_char, window_characters, written_characters
from dlm.tokenizers import BPETokenizer, CharTokenizer


def test_char_windows_spell_one_character_a_token(corpus_text: str) -> None:
    tok = CharTokenizer.from_text(corpus_text)
    ids = torch.tensor(tok.encode(corpus_text[:96])).view(3, 32)
    assert window_characters(ids, tok) == 96
    assert window_characters(ids, tok, start=1) == 93


def test_bpe_windows_spell_their_text_and_reserved_tokens_count_one(corpus_text: str) -> None:
    tok = BPETokenizer.train([corpus_text], vocab_size=320)
    text = corpus_text[:400]
    ids = tok.encode(text)
    n = len(ids) // 4 * 4
    windows = torch.tensor(ids[:n]).view(4, n // 4)
    assert window_characters(windows, tok) == len(tok.decode(ids[:n]))
    assert n < len(tok.decode(ids[:n]))  # merges: fewer tokens than characters
    eos = torch.full((4, 1), tok.eos_id)
    assert window_characters(torch.cat((windows, eos), 1), tok) == window_characters(windows, tok) + 4


def test_add_per_char_rescales_the_sum() -> None:
    result = add_per_char({"nats_per_token": 2.0, "tokens": 100}, 250)
    assert result["nats_per_char"] == pytest.approx(0.8)
    assert result["bits_per_char"] == pytest.approx(0.8 / math.log(2))
    clean = add_per_char({"nats_per_token": 3.0, "tokens_scored": 50}, 100)
    assert clean["nats_per_char"] == pytest.approx(1.5)


def test_eval_of_a_bpe_block_run_reports_nats_per_char(corpus_file: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "bpe"
    assert main(["train", "--preset", "tiny", "--data", str(corpus_file), "--out", str(run), "--max-steps", "3",
                 "--quiet", "--objective", "bd3", "--block-size", "4", "data.tokenizer=bpe", "data.vocab_size=320",
                 "model.clean_causal=true", "diffusion.clean_ar_weight=1"]) == 0
    capsys.readouterr()
    report = tmp_path / "bpe.json"
    assert main(["eval", "--ckpt", str(run), "--l2r", "--json", str(report), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "nats/token" in out and "nats/char" in out
    result = json.loads(report.read_text())
    tokens, chars = result["tokens"], result["characters"]
    assert chars > tokens  # BPE merges characters
    assert result["nats_per_char"] == pytest.approx(result["nats_per_token"] * tokens / chars)
    for part in ("left_to_right", "clean_copy"):
        assert result[part]["nats_per_char"] < result[part]["nats_per_token"]
    # shorter windows, to compare tokenizers on windows of about as many characters; each a whole number of blocks
    assert main(["eval", "--ckpt", str(run), "--window", "16", "--json", str(report), "--quiet"]) == 0
    short = json.loads(report.read_text())
    assert short["window_length"] == 16 and short["windows"] > result["windows"]
    capsys.readouterr()
    for bad, says in (("18", "multiple of the run's block size 4"), ("64", "between 1 and the run's context")):
        assert main(["eval", "--ckpt", str(run), "--window", bad, "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert says in err and len(err.splitlines()) == 1


def test_written_characters_count_what_the_samples_spell(corpus_text: str) -> None:
    """A sampler's speed is in characters: a BPE token spells several, a prompt or a reserved token none."""
    tok = BPETokenizer.train([corpus_text], vocab_size=320)
    prompt, reply = tok.encode(corpus_text[:40]), tok.encode(corpus_text[40:120])
    tokens = torch.tensor([prompt + reply + [tok.eos_id]])
    generated = torch.tensor([[False] * len(prompt) + [True] * (len(reply) + 1)])
    assert written_characters(tok, tokens, generated) == len(tok.decode(reply)) > len(reply)
    chars = CharTokenizer.from_text(corpus_text)
    ids = torch.tensor([chars.encode(corpus_text[:30])])
    assert written_characters(chars, ids, torch.ones_like(ids, dtype=torch.bool)) == 30
