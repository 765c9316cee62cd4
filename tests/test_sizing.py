"""The budget-aware default: the probe's choice is a pure function of the measured speed, it reaches
the run's config with its reason, and --preset or key=value still win."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from dlm import sizing
from dlm.cli import main


def test_the_choice_follows_the_tokens_a_budget_buys() -> None:
    (_, low_name, low_overrides), (high, high_name, high_overrides) = sizing.SIZE_TABLE[0], sizing.SIZE_TABLE[-1]
    speed_for = lambda tokens: tokens / 600 / sizing.PROBE_EFFICIENCY["float32"]  # noqa: E731
    assert sizing.choose_size(speed_for(high * 0.99), 600).name == sizing.SIZE_TABLE[-2][1]
    assert sizing.choose_size(speed_for(high * 1.01), 600).name == high_name
    assert sizing.choose_size(speed_for(high * 1.01), 600).overrides == high_overrides
    assert sizing.choose_size(1.0, 600).name == low_name and sizing.choose_size(1.0, 600).overrides == low_overrides
    # Deterministic: the same speed, the same choice; twice the time, twice the tokens.
    a, b = sizing.choose_size(4321.0, 600), sizing.choose_size(4321.0, 600)
    assert (a.name, a.overrides, a.tokens) == (b.name, b.overrides, b.tokens)
    assert sizing.choose_size(4321.0, 1200).tokens == pytest.approx(2 * a.tokens)
    # bf16 steps speed up more under compilation than fp32 ones: the same probe speed buys more.
    assert sizing.choose_size(4321.0, 600, "bfloat16").tokens > a.tokens
    # The AR twin: the same geometry, plus its row's regulariser.
    for speed in (1.0, speed_for(high * 1.01)):
        mdlm, ar = sizing.choose_size(speed, 600), sizing.choose_size(speed, 600, objective="ar")
        assert ar.name == mdlm.name and ar.overrides[:len(mdlm.overrides)] == mdlm.overrides
        assert ar.overrides[len(mdlm.overrides):] == sizing.AR_EXTRA.get(mdlm.name, [])
    assert sizing.AR_EXTRA[high_name], "the larger row gives the twin a regulariser (it overfits there)"
    from dlm.config import RunConfig, apply_overrides

    for extra in sizing.AR_EXTRA.values():  # training-only settings: the twin keeps the diffusion network
        base = RunConfig()
        base.train.objective = "ar"
        changed = apply_overrides(RunConfig(), ["train.objective=ar", *extra])
        changed.validate()
        assert dataclasses.replace(changed.model, dropout=0.0, resid_dropout=0.0) == base.model


def test_a_block_diffusion_run_is_sized_for_the_fewer_tokens_its_steps_buy() -> None:
    (high, high_name, _), below = sizing.SIZE_TABLE[-1], sizing.SIZE_TABLE[-2][1]
    speed = high * 1.5 / 600 / sizing.PROBE_EFFICIENCY["float32"]  # MDLM: half as many again as the top row needs
    mdlm, bd3 = sizing.choose_size(speed, 600), sizing.choose_size(speed, 600, objective="bd3")
    assert mdlm.name == high_name and bd3.name == below
    assert bd3.tokens == pytest.approx(mdlm.tokens / sizing.STEP_COST["bd3"])
    assert sizing.choose_size(2 * speed, 600, objective="bd3").name == high_name
    assert "bd3 step costs ~2× the probe's" in bd3.reason("float32")
    assert "step costs" not in mdlm.reason("float32")


def bd3_speed_for(tokens: float) -> float:
    """The fp32 probe speed at which a 600-s block run buys `tokens`."""
    return tokens / 600 / sizing.PROBE_EFFICIENCY["float32"] * sizing.STEP_COST["bd3"]


def test_a_cpu_budget_gives_a_block_run_smaller_steps() -> None:
    from dlm.config import apply_overrides
    from dlm.presets import get_preset

    small = sizing.choose_size(bd3_speed_for(sizing.SMALL_BATCH_TOKENS * 0.9), 600, objective="bd3")
    large = sizing.choose_size(bd3_speed_for(sizing.SMALL_BATCH_TOKENS * 1.1), 600, objective="bd3")
    assert small.small_batch and not small.short and not large.small_batch
    assert small.overrides[-1:] == sizing.SMALL_BATCH_EXTRA["bd3"] and "train.batch_size=8" not in large.overrides
    assert "more, smaller steps" in small.reason("bfloat16") and "smaller steps" not in large.reason("bfloat16")
    # Measured for block runs only: MDLM and the twin keep the preset's batch on the same machine.
    for objective in ("mdlm", "ar"):
        assert not sizing.choose_size(small.tokens_per_s, 600, objective=objective).small_batch
    cfg = apply_overrides(get_preset("shakespeare-char-cpu"), small.overrides)
    cfg.validate()
    assert (cfg.train.batch_size, cfg.train.min_lr_ratio) == (8, get_preset("shakespeare-char-cpu").train.min_lr_ratio)


def test_a_short_budget_gives_a_block_run_a_higher_floor_too() -> None:
    from dlm.config import apply_overrides
    from dlm.presets import get_preset

    short = sizing.choose_size(bd3_speed_for(sizing.SHORT_BUDGET_TOKENS * 0.9), 600, objective="bd3")
    enough = sizing.choose_size(bd3_speed_for(sizing.SHORT_BUDGET_TOKENS * 1.1), 600, objective="bd3")
    assert short.short and not enough.short and short.name == enough.name and enough.small_batch
    assert short.overrides == enough.overrides + sizing.SHORT_BUDGET_EXTRA["bd3"]
    assert "a short budget (under" in short.reason("float32") and "short budget (under" not in enough.reason("float32")
    for objective in ("mdlm", "ar"):
        assert not sizing.choose_size(short.tokens_per_s, 600, objective=objective).short
    # The settings are valid, and change the batch and the floor of the default preset.
    cfg = apply_overrides(get_preset("shakespeare-char-cpu"), short.overrides)
    cfg.validate()
    assert (cfg.train.batch_size, cfg.train.min_lr_ratio) == (8, 0.3)


def test_train_without_a_preset_probes_and_records_why(tmp_path: Path, corpus_file: Path, monkeypatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    low = sizing.SIZE_TABLE[0]
    assert low[2], "the first row changes the geometry (the user's key=value must win over it)"
    slow = 1000.0  # a machine slow enough for the first row
    monkeypatch.setattr(sizing, "probe_tokens_per_second", lambda cfg, steps=3, dtype=None: (slow, 1.5, "float32"))
    monkeypatch.setattr(sizing, "dtypes_to_try", lambda cfg: [])  # the precision is the machine's (tested below)
    run = tmp_path / "run"
    args = ["train", "--data", str(corpus_file), "--out", str(run), "--max-steps", "2", "--quiet",
            "model.d_model=32", "model.n_head=2", "model.block_size=32", "compile=no"]
    assert main(args) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(f"dlm: budget probe: {slow:,.0f} tokens/s (float32, measured in 1.5 s)")
    assert f"size {low[1]}" in first
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["auto_size"] == first.removeprefix("dlm: ")
    assert "model.n_layer=3" in low[2] and config["model"]["n_layer"] == 3  # the probe's row
    assert config["model"]["d_model"] == 32  # the user's key=value wins, and the line says so
    assert first.endswith("; your key=value wins: model.d_model=32")
    assert "a short budget" in first and config["train"]["batch_size"] == 8  # so slow a machine: few steps
    # Micro-batches the user chose for the preset's batch keep that batch (not an error about batch 8).
    assert main([*args[:4], str(tmp_path / "accum"), *args[5:], "train.grad_accum=16"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "not the batch: train.grad_accum is given" in first and "train.batch_size=8" not in first
    assert json.loads((tmp_path / "accum" / "config.json").read_text())["train"]["batch_size"] == 16
    # An explicit preset: no probe.
    assert main(["train", "--preset", "tiny", "--data", str(corpus_file), "--out", str(tmp_path / "b"),
                 "--max-steps", "2", "--quiet"]) == 0
    assert "budget probe" not in capsys.readouterr().out
    assert json.loads((tmp_path / "b" / "config.json").read_text())["train"]["auto_size"] == ""


@pytest.mark.parametrize(("bf16_speed", "chosen"), [(900.0, "fp32"), (3000.0, "bf16")])
def test_where_the_precision_is_open_the_probe_trains_in_the_faster(tmp_path: Path, corpus_file: Path, monkeypatch,
                                                                    capsys: pytest.CaptureFixture, bf16_speed: float,
                                                                    chosen: str) -> None:
    speeds = {"bf16": (bf16_speed, "bfloat16"), "fp32": (1000.0, "float32")}
    asked = []

    def probe(cfg, steps=3, dtype=None):  # noqa: ANN001, ANN202
        asked.append(dtype)
        speed, name = speeds[dtype or cfg.train.dtype]
        return speed, 1.0, name

    monkeypatch.setattr(sizing, "probe_tokens_per_second", probe)
    monkeypatch.setattr("dlm.runtime.cpu_has_bf16", lambda: True)
    run = tmp_path / "run"
    assert main(["train", "--data", str(corpus_file), "--out", str(run), "--max-steps", "1", "--quiet",
                 "model.d_model=32", "model.n_head=2", "model.block_size=32", "compile=no"]) == 0
    assert asked == ["bf16", "fp32"]
    first = capsys.readouterr().out.splitlines()[0]
    other = "900 in bfloat16" if chosen == "fp32" else "1,000 in float32"
    assert f"because it was the faster here ({other})" in first
    assert json.loads((run / "config.json").read_text())["train"]["dtype"] == chosen
    # A precision the user chose is not probed.
    asked.clear()
    assert main(["train", "--data", str(corpus_file), "--out", str(tmp_path / "b"), "--max-steps", "1", "--quiet",
                 "model.d_model=32", "model.n_head=2", "model.block_size=32", "compile=no", "train.dtype=bf16"]) == 0
    assert asked == [None]


def test_a_bad_value_fails_before_the_probe(tmp_path: Path, monkeypatch, capsys: pytest.CaptureFixture) -> None:
    def no_probe(cfg, steps=3, dtype=None):  # noqa: ANN001, ANN202
        raise AssertionError("the probe ran before the config was checked")

    monkeypatch.setattr(sizing, "probe_tokens_per_second", no_probe)
    assert main(["train", "--out", str(tmp_path / "run"), "train.ar_input_mask=1.5"]) != 0
    assert "train.ar_input_mask=1.5 must be in [0, 1)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_the_probe_measures_a_real_speed() -> None:
    from dlm.presets import tiny

    speed, seconds, dtype = sizing.probe_tokens_per_second(tiny(), steps=2)
    assert speed > 0 and seconds > 0 and dtype in ("bfloat16", "float32")


def test_the_probe_does_not_run_when_its_answer_would_be_ignored() -> None:
    from dlm.config import apply_overrides
    from dlm.presets import get_preset

    def reason(*overrides: str) -> str | None:
        return sizing.probe_skip_reason(apply_overrides(get_preset("shakespeare-char-cpu"), list(overrides)),
                                        list(overrides))

    assert sizing.SIZE_FIELDS == ("model.n_layer", "model.d_model")
    assert reason() is None and reason("model.n_layer=2") is None and reason("lr=1e-3") is None
    # Every field the table chooses is given (bare or dotted keys): the size is the user's.
    assert reason("n_layer=2", "model.d_model=64").startswith("budget probe skipped: model.n_layer and "
                                                              "model.d_model are given")
    assert "is the network" in reason("model.backbone=hf:some/folder")


def tiny_bert_folder(folder: Path, text: str) -> Path:
    """A BertForMaskedLM built from a config (no download), with a WordPiece tokenizer trained on `text`."""
    transformers = pytest.importorskip("transformers", reason="backbones need transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    rust = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    rust.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    rust.train_from_iterator(text.splitlines(), trainers.WordPieceTrainer(
        vocab_size=200, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False))
    transformers.PreTrainedTokenizerFast(tokenizer_object=rust, unk_token="[UNK]", pad_token="[PAD]",
                                         cls_token="[CLS]", sep_token="[SEP]",
                                         mask_token="[MASK]").save_pretrained(folder)
    config = transformers.BertConfig(vocab_size=rust.get_vocab_size(), hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    transformers.BertForMaskedLM(config).save_pretrained(folder)
    return folder


def test_a_backbone_run_skips_the_probe(tmp_path: Path, corpus_file: Path, monkeypatch,
                                        capsys: pytest.CaptureFixture) -> None:
    bert = tiny_bert_folder(tmp_path / "bert", corpus_file.read_text())

    def no_probe(cfg, steps=3, dtype=None):  # noqa: ANN001, ANN202
        raise AssertionError("the probe timed dlm's Transformer for a run whose network is a backbone")

    monkeypatch.setattr(sizing, "probe_tokens_per_second", no_probe)
    assert main(["train", "--data", str(corpus_file), "--out", str(tmp_path / "run"), "--max-steps", "2", "--quiet",
                 f"model.backbone=hf:{bert}", "model.backbone_init=config", "model.block_size=32",
                 "train.batch_size=4", "compile=no"]) == 0
    out = capsys.readouterr().out
    assert f"dlm: budget probe skipped: model.backbone=hf:{bert} is the network" in out.splitlines()[0]
    assert "budget probe:" not in out
