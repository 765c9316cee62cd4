"""dlm models in lm-evaluation-harness: tasks from local YAML files over local JSON data written here,
run through the real `lm_eval` package on tiny trained runs (offline)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from dlm.cli import main
from dlm.errors import DlmError

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval tests need lm-evaluation-harness (pip install 'dlm[lmeval]')")
from lm_eval.api.instance import Instance  # noqa: E402

from dlm.eval.lm_harness import DlmLM, evaluate_tasks  # noqa: E402

QUESTIONS = [  # which continuation is the corpus's text: the tiny models saw sentences like these
    ("The cat sat on the", [" mat.", " xqz."], 0),
    ("She sells sea shells by the", [" zzkq.", " sea shore."], 1),
    ("An apple a day keeps the", [" doctor away.", " qqq vvv."], 0),
    ("Rivers run to the", [" xx yy.", " sea."], 1),
]


def request(kind: str, *args, idx: int = 0) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=idx)


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory: pytest.TempPathFactory, corpus_text: str) -> Path:
    """Three tasks written as lm-eval YAML over JSON lines: multiple choice, rolling likelihood,
    and generation with a stop sequence."""
    root = tmp_path_factory.mktemp("lm-eval-tasks")
    data = {
        "mc.jsonl": [{"question": q, "choices": c, "answer": a} for q, c, a in QUESTIONS],
        "docs.jsonl": [{"text": line} for line in corpus_text.splitlines()[:4]],
        "gen.jsonl": [{"prompt": q, "target": c[a].strip()} for q, c, a in QUESTIONS],
    }
    for name, rows in data.items():
        (root / name).write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    common = "dataset_path: json\ntest_split: train\n"
    (root / "tiny_mc.yaml").write_text(
        f"task: tiny_mc\n{common}dataset_kwargs:\n  data_files:\n    train: {root / 'mc.jsonl'}\n"
        "output_type: multiple_choice\ndoc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{answer}}'\ntarget_delimiter: ''\nmetric_list:\n  - metric: acc\n")
    (root / "tiny_rolling.yaml").write_text(
        f"task: tiny_rolling\n{common}dataset_kwargs:\n  data_files:\n    train: {root / 'docs.jsonl'}\n"
        "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n")
    (root / "tiny_gen.yaml").write_text(
        f"task: tiny_gen\n{common}dataset_kwargs:\n  data_files:\n    train: {root / 'gen.jsonl'}\n"
        "output_type: generate_until\ndoc_to_text: '{{prompt}}'\ndoc_to_target: '{{target}}'\n"
        "generation_kwargs:\n  until: ['e']\n  max_gen_toks: 12\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n")
    return root


@pytest.fixture(scope="module")
def bd3_run(tmp_path_factory: pytest.TempPathFactory, tiny_twins) -> Path:
    out = tmp_path_factory.mktemp("bd3") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DLM_CACHE", str(tiny_twins["root"] / "cache"))
        assert main(["train", "--preset", "tiny", "--data", str(tiny_twins["corpus"]), "--out", str(out),
                     "--max-steps", "40", "--quiet", "model.block_size=64", "--objective", "bd3",
                     "--block-size", "4"]) == 0
    return out


def test_the_ar_twins_rolling_loglikelihood_is_dlm_evals_exact_nll(tiny_twins, corpus_text: str) -> None:
    from dlm.eval.likelihood import evaluate_likelihood

    model = DlmLM(str(tiny_twins["ar"]), dtype="fp32", progress=False)
    ids = model.pipe.tokenizer.encode(corpus_text)[:64 * 3]  # three whole windows, as dlm eval cuts them
    text = model.pipe.tokenizer.decode(ids)
    (rolling,) = model.loglikelihood_rolling([request("loglikelihood_rolling", text)])
    exact = evaluate_likelihood(model.pipe.model, torch.tensor(ids).view(3, 64), model.pipe.tokenizer.special,
                                causal=True, device=model.pipe.device, dtype=torch.float32, progress=False)
    assert math.isclose(-rolling, exact["nats_per_token"] * len(ids), rel_tol=1e-5)
    # loglikelihood of a continuation is the same exact figure, read off the same window
    context, continuation = model.pipe.tokenizer.decode(ids[:40]), model.pipe.tokenizer.decode(ids[40:64])
    (first,) = model.loglikelihood([request("loglikelihood", context, continuation)])
    (whole,) = model.loglikelihood_rolling([request("loglikelihood_rolling", model.pipe.tokenizer.decode(ids[:64]))])
    (head,) = model.loglikelihood([request("loglikelihood", "", context)])
    assert math.isclose(first[0] + head[0], whole, rel_tol=1e-5)
    assert model.standard_error_summary() is None  # exact: nothing to report


@pytest.mark.parametrize("run", ["mdlm", "bd3"])
def test_the_diffusion_estimate_is_seeded_and_its_error_shrinks(run: str, tiny_twins, bd3_run: Path) -> None:
    path = tiny_twins["mdlm"] if run == "mdlm" else bd3_run
    req = request("loglikelihood", "The cat sat on", " the mat and looked at the hat.")
    few, many = (DlmLM(str(path), mc_samples=n, dtype="fp32", progress=False) for n in (8, 128))
    (a,), (b,) = few.loglikelihood([req]), many.loglikelihood([req])
    assert few.standard_errors[0] > 2 * many.standard_errors[0] > 0  # s.e. ∝ 1/√samples: 4× expected
    assert abs(a[0] - b[0]) < 4 * few.standard_errors[0]  # the same quantity
    again = DlmLM(str(path), mc_samples=8, dtype="fp32", progress=False)
    other = DlmLM(str(path), mc_samples=8, dtype="fp32", progress=False, seed=1)
    assert again.loglikelihood([req]) == [a]  # the same seed, the same score
    assert other.loglikelihood([req]) != [a]
    # a request's score does not depend on its batch
    batch = again.loglikelihood([request("loglikelihood", "Rivers", " run."), req])
    assert batch[1] == a


def test_tasks_run_through_lm_eval(tiny_twins, tasks_dir: Path) -> None:
    for run in ("ar", "mdlm"):
        model = DlmLM(str(tiny_twins[run]), mc_samples=16, dtype="fp32", progress=False, steps=12)
        results = evaluate_tasks(model, ["tiny_mc", "tiny_rolling", "tiny_gen"], str(tasks_dir))
        acc = results["results"]["tiny_mc"]["acc,none"]
        assert acc >= 0.75, (run, acc)  # the corpus's continuation beats gibberish
        assert results["results"]["tiny_rolling"]["word_perplexity,none"] > 1
        assert results["dlm"]["objective"] == run and results["dlm"]["seed"] == 0
        assert (results["dlm"]["mc_samples"] is None) == (run == "ar")


def test_generation_stops_at_the_stop_sequence(tiny_twins) -> None:
    model = DlmLM(str(tiny_twins["mdlm"]), dtype="fp32", progress=False, steps=16, temperature=0.0)
    reqs = [request("generate_until", prompt, {"until": ["e", "\n"], "max_gen_toks": 16}, idx=i)
            for i, prompt in enumerate(["The cat", "She sells", "Winter is"])]
    outs = model.generate_until(reqs)
    assert all("e" not in out and "\n" not in out and len(out) <= 16 for out in outs), outs
    unbounded = model.generate_until([request("generate_until", "The cat", {"until": [], "max_gen_toks": 16})])
    assert len(unbounded[0]) == 16 or "[EOS]" not in unbounded[0]
    assert model.generate_until(reqs) == outs  # seeded per request


def test_dlm_eval_tasks_writes_a_reproducible_json(tiny_twins, tasks_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "results.json"
    args = ["eval", "--ckpt", str(tiny_twins["mdlm"]), "--tasks", "tiny_mc,tiny_rolling", "--include-path",
            str(tasks_dir), "--mc-samples", "8", "--limit", "3", "--json", str(out), "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "tiny_mc" in printed and "8 samples per request" in printed
    saved = json.loads(out.read_text())
    assert saved["dlm"]["mc_samples"] == 8 and saved["dlm"]["limit"] == 3
    assert saved["dlm"]["loglikelihood_standard_errors"]["requests"] > 0
    assert saved["dlm"]["sampler"]["sampler"] and saved["dlm"]["dtype"] == "float32"
    assert main([*args[:-3], "--json", str(tmp_path / "again.json"), "--quiet"]) == 0
    assert json.loads((tmp_path / "again.json").read_text())["results"] == saved["results"]


def test_bad_tasks_and_text_are_one_line(tiny_twins, tasks_dir: Path, tmp_path: Path, capsys) -> None:
    assert main(["eval", "--ckpt", str(tiny_twins["mdlm"]), "--tasks", "no_such_task", "--include-path",
                 str(tasks_dir), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unknown lm-eval task(s) no_such_task" in err
    model = DlmLM(str(tiny_twins["mdlm"]), dtype="fp32", progress=False)
    with pytest.raises(DlmError, match="cannot encode"):
        model.loglikelihood([request("loglikelihood", "The cat", " \u4e2d\u6587")])
    with pytest.raises(DlmError, match="unknown model argument"):
        DlmLM(str(tiny_twins["mdlm"]), mc_sample=8)


def test_lm_evals_own_command_line_knows_dlm(tiny_twins, tasks_dir: Path, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "dlm.eval.lm_harness", "run", "--model", "dlm", "--model_args",
                           f"pretrained={tiny_twins['ar']},dtype=fp32,progress=false", "--tasks", "tiny_mc",
                           "--include_path", str(tasks_dir), "--limit", "2", "--output_path", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "tiny_mc" in done.stdout and "acc" in done.stdout


def test_a_word_piece_tokenizer_sees_the_continuation_as_in_training(corpus_text: str) -> None:
    from types import SimpleNamespace

    from dlm.tokenizers.bpe import BPETokenizer

    harness = DlmLM.__new__(DlmLM)  # only the tokenizer matters here
    harness.pipe = SimpleNamespace(tokenizer=BPETokenizer.train([corpus_text] * 4, vocab_size=400))
    tok = harness.pipe.tokenizer
    context, word = "the cat ", "sat"
    ctx, cont = harness._encode_pair(context, word)
    # The space joins the word (" sat", one piece in a byte-level BPE), as lm-eval's own models do.
    assert ctx == tok.encode("the cat") and cont == tok.encode("the cat sat")[len(ctx):]
    assert tok.decode(cont) == " sat" and cont != tok.encode(word)
    assert harness._encode_pair("the cat", " sat") == (ctx, cont)
