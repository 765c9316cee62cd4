"""The ONNX page's byte-level BPE (dlm/serve/static/bpe.js), run in Node.js, gives the ids and the text that
dlm's BPE tokenizer gives: the page can encode a prompt and spell a BPE model's tokens without a server."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from dlm.tokenizers.bpe import BPETokenizer

NODE = shutil.which("node") or shutil.which("nodejs")
pytestmark = pytest.mark.skipif(NODE is None, reason="no Node.js on this machine (apt-get install nodejs): the "
                                "page's tokenizer is run in it")
BPE_JS = Path(__file__).resolve().parents[1] / "dlm/serve/static/bpe.js"

WORDS = ("the king shall ride at dawn and we'll follow him there ; you've said it 's late , isn't it ? "
         "café naïve — 12 345 1999 ☃ Ω").split()
# Texts the tokenizer never saw, chosen for the places a port goes wrong: whitespace before a line break (one
# piece per line in Python), Windows and old Mac line ends, runs of spaces and tabs, contractions at a
# capital, digits, accents, characters of 3 and 4 UTF-8 bytes, and nothing at all.
TEXTS = ["", "a \nb", "word  \n\nnext", "  two leading spaces", "tabs\tand\t\ttabs", "one\r\ntwo\rthree\n",
         "I'LL SAY 'TIS so, can't you?", "Année 2024: 3.14159 and 1,000,000!", "snow ☃ and party 🎉 and Ωmega",
         "trailing spaces   ", "\n\n\n", "x\u2028y\x85z", "KING RICHARD:\nWe'll ride at dawn; the king's men follow."]


def corpus(lines: int = 400, seed: int = 0) -> str:
    """Lines of WORDS, a third of them ending in a space (so that a space before a break is a merge)."""
    rng = random.Random(seed)
    return "".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) + rng.choice(["", "", " "])
                   + "\n" for _ in range(lines))


def run_node(script: str, payload: dict, tmp_path: Path) -> dict:
    (tmp_path / "payload.json").write_text(json.dumps(payload), encoding="utf-8")
    (tmp_path / "run.js").write_text(script, encoding="utf-8")
    done = subprocess.run([NODE, str(tmp_path / "run.js"), str(BPE_JS), str(tmp_path / "payload.json")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


SCRIPT = """
const fs = require("fs");
const {ByteLevelBPE} = require(process.argv[2]);
const payload = JSON.parse(fs.readFileSync(process.argv[3], "utf8"));
const bpe = new ByteLevelBPE(payload.vocab, payload.merges);
const ids = payload.texts.map((text) => bpe.encode(text));
process.stdout.write(JSON.stringify({
  ids, decoded: ids.map((row) => bpe.decode(row)), spelt: payload.vocab.map((_, id) => bpe.decode([id])),
}));
"""


def test_the_page_tokenizer_gives_dlms_ids_and_text(tmp_path: Path) -> None:
    tokenizer = BPETokenizer.train(corpus().splitlines(keepends=True), vocab_size=400)
    vocab, merges = tokenizer.vocab_and_merges()
    assert len(vocab) == tokenizer.vocab_size and len(merges) > 50  # a real merge table, not bytes only
    assert ["Ġ", "Ċ"] in merges  # " \n" is one piece at a line's end, two before more text on the line
    texts = [*TEXTS, *corpus(lines=20, seed=1).splitlines(keepends=True), corpus(lines=30, seed=2)]
    out = run_node(SCRIPT, {"vocab": vocab, "merges": merges, "texts": texts}, tmp_path)
    for text, ids, decoded in zip(texts, out["ids"], out["decoded"], strict=True):
        assert ids == tokenizer.encode(text), text
        assert decoded == tokenizer.decode(ids) == text
    assert sum(len(ids) for ids in out["ids"]) < sum(len(text.encode()) for text in texts) * 0.6  # merged
    # Each token alone, as the page shows a token just written: the same text as Python's, U+FFFD included
    # where a token holds part of a character.
    assert out["spelt"] == [tokenizer.decode([i]) for i in range(tokenizer.vocab_size)]
    assert any("\ufffd" in text for text in out["spelt"])
