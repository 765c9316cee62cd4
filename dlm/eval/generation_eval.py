"""Sample, time and score: the `--gen` part of `dlm eval`.

Samples N sequences from a loaded run, records the wall time, tokens/s, forward passes and peak
memory, and scores the samples: unigram entropy, distinct-n and self-BLEU always; gen-PPL under
a judge (a dlm AR run or a Hugging Face causal LM, see dlm/eval/judges.py) when one is given;
the real-word rate (the share of the samples' words found in a word list, by default the training
split's); MAUVE between the samples and as many random windows of the split, on a sentence
encoder's features of each whole text (or, as an option, on the judge's last-token features).
"""

from __future__ import annotations

import resource
import time
from collections.abc import Set

import numpy as np
import torch

from dlm.data.loader import RandomWindows
from dlm.errors import DlmError
from dlm.eval.judges import Judge, judge_kind, judge_perplexity, load_judge
from dlm.eval.sample_metrics import sample_quality
from dlm.eval.words import real_word_rate, word_list_from_text
from dlm.inference import Pipeline
from dlm.sampling.config import SamplerConfig

MAUVE_FEATURES = ("encoder", "judge")


def check_judge(judge: str | None, mauve: bool = False, mauve_features: str = "encoder") -> None:
    """Fail fast (before minutes of evaluation) on a judge path that cannot work."""
    if mauve_features not in MAUVE_FEATURES:
        raise DlmError(f"--mauve-features {mauve_features!r}: choose encoder (a sentence encoder's view of the "
                       "whole text) or judge (the judge's last-token hidden state)")
    if mauve and mauve_features == "judge" and not judge:
        raise DlmError("--mauve-features judge needs --judge (an AR run or a Hugging Face causal LM folder) "
                       "whose features MAUVE compares; or drop it for the sentence encoder's")
    if judge and judge_kind(judge) == "hf":
        from dlm.eval.hf_judge import import_transformers

        import_transformers()


def check_sampler_options(options: dict) -> None:
    """Fail fast on sampler options --gen cannot use (before minutes of likelihood evaluation)."""

    SamplerConfig.from_kwargs(**options)
    if options.get("stop_at_eos"):
        raise DlmError("--stop-at-eos gives samples of different lengths, which --gen does not score; drop it")


# The default word list reads at most this many tokens of the training split: all of a small corpus,
# and plenty of vocabulary for a large one without decoding billions of tokens.
WORD_LIST_TOKENS = 20_000_000


def run_word_list(pipe: Pipeline, train_tokens: np.ndarray) -> frozenset[str]:
    """The real-word rate's default word list: the words of the run's training split (its first
    WORD_LIST_TOKENS tokens), so a word counts as real when the model could have read it."""
    special = set(pipe.tokenizer.special_ids)
    ids = np.asarray(train_tokens[:WORD_LIST_TOKENS])
    text = pipe.tokenizer.decode([int(i) for i in ids[~np.isin(ids, list(special))]])
    return word_list_from_text(text)


def draw_samples(pipe: Pipeline, num_samples: int, length: int, steps: int, batch_size: int, seed: int,
                 options: dict) -> tuple[torch.Tensor, int, float]:
    """The samples `evaluate_generation` judges: batches of `batch_size`, the batch starting at sample i
    seeded seed + i. Returns their ids (num_samples, length) on the CPU, the forward passes and the wall time."""
    batches, passes, start = [], 0, time.perf_counter()
    for first in range(0, num_samples, batch_size):
        count = min(batch_size, num_samples - first)
        result = pipe.sample("", length=length, steps=steps, seed=seed + first, num_samples=count, **options)
        batches.append(result.tokens)
        passes += result.forward_passes  # real model calls: fewer than steps with caches, thresholds, reuse
    if pipe.device.type == "cuda":
        torch.cuda.synchronize()
    return torch.cat(batches).cpu(), passes, time.perf_counter() - start


def sample_texts(pipe: Pipeline, samples: torch.Tensor) -> list[str]:
    """What is judged, as text: the special tokens dropped, except [EOS]."""
    special = set(pipe.tokenizer.special_ids) - {pipe.tokenizer.eos_id}
    return [pipe.tokenizer.decode([i for i in row if i not in special]) for row in samples.tolist()]


def evaluate_generation(pipe: Pipeline, split_tokens: np.ndarray | None, *, num_samples: int, length: int = 0,
                        steps: int = 0, batch_size: int = 64, seed: int = 0, judge: str | None = None,
                        mauve: bool = False, sampler_options: dict | None = None,
                        independent_judge: str | None = None, words: Set[str] | None = None,
                        mauve_features: str = "encoder", encoder: str | None = None,
                        mauve_bootstrap: int = 50) -> dict:
    """Sample `num_samples` sequences of `length` tokens (default: the context) with `steps` denoising
    steps (default: `length`) from `pipe` and score them.

    sampler_options: passed as they are to `pipe.sample` (SamplerConfig fields: sampler, temperature, ...)
    and recorded in the result. judge: path of the judge (required for `mauve`). independent_judge: a
    second judge (e.g. the packaged `smollm2`, which knows nothing of the corpus) whose gen-PPL (and
    MAUVE, with `mauve`) of the same samples are reported as independent_gen_ppl, independent_mauve, ...
    words: a word list (run_word_list, or a user's): the samples' real-word rate is reported, and that of
    as many held-out windows of `split_tokens` for scale.
    mauve_features: "encoder" (default; a sentence encoder's mean-pooled view of each whole text, the
    encoder folder `encoder` or the packaged MiniLM, with a bootstrap interval of `mauve_bootstrap`
    resamples) or "judge" (the judge's, and the independent judge's, last-token hidden states).
    """
    check_judge(judge, mauve, mauve_features)
    if independent_judge:
        check_judge(independent_judge)
    options = dict(sampler_options or {})
    check_sampler_options(options)
    scorer: Judge | None = load_judge(judge, pipe) if judge else None  # before sampling: fail fast
    text_encoder = None
    if mauve and mauve_features == "encoder":
        from dlm.eval.text_features import TextEncoder

        text_encoder = TextEncoder(encoder, device=pipe.device)
    second: Judge | None = load_judge(independent_judge, pipe) if independent_judge else None
    length = length or pipe.model.cfg.block_size
    steps = steps or length
    if pipe.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    samples, passes, wall = draw_samples(pipe, num_samples, length, steps, batch_size, seed, options)
    peak = (torch.cuda.max_memory_allocated() if pipe.device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20
    quality = sample_quality(samples)
    texts = sample_texts(pipe, samples)
    # Held-out windows of the split, as many as samples, the same for every figure: the reference of
    # MAUVE and the real-word rate of real text, for scale.
    reference = (RandomWindows(split_tokens, length, seed=seed).next_batch(num_samples)
                 if split_tokens is not None else None)
    reference_texts = None if reference is None else sample_texts(pipe, reference)
    if words is not None:
        quality.update(word_figures(texts, words))
        if reference_texts is not None:
            quality["real_word_rate_held_out"] = real_word_rate(reference_texts, words)["real_word_rate"]
    if scorer is not None:
        quality.update(judge_perplexity(scorer, samples, batch_size))
    if mauve and reference is None:
        raise DlmError("MAUVE needs held-out text to compare the samples with; pass the split's tokens")
    if text_encoder is not None:
        from dlm.eval.mauve import mauve_with_interval

        scores = mauve_with_interval(text_encoder.features(texts, batch_size), text_encoder.features(reference_texts,
                                     batch_size), seed=seed, bootstrap=mauve_bootstrap)
        quality.update({k if k == "mauve" else f"mauve_{k}": v for k, v in scores.items()})
        quality.update({"mauve_features": "encoder", **text_encoder.describe()})
    elif mauve:
        from dlm.eval.mauve import mauve_with_interval

        scores = mauve_with_interval(scorer.features(samples, batch_size).numpy(),
                                     scorer.features(reference, batch_size).numpy(), seed=seed,
                                     bootstrap=mauve_bootstrap)
        quality.update({k if k == "mauve" else f"mauve_{k}": v for k, v in scores.items()})
        quality["mauve_features"] = "judge, last token"
    if second is not None:
        quality.update({f"independent_{k}": v for k, v in judge_perplexity(second, samples, batch_size).items()})
        if mauve and mauve_features == "judge":
            scores = mauve_with_interval(second.features(samples, batch_size).numpy(),
                                         second.features(reference, batch_size).numpy(), seed=seed,
                                         bootstrap=mauve_bootstrap)
            quality["independent_mauve"] = scores["mauve"]
    ran = pipe.sampler_config(**options)  # what an option left unset was (recorded, so the JSON says what ran)
    sampler = "autoregressive" if pipe.is_autoregressive else "speculative" if ran.speculative else ran.sampler
    temperature = ran.temperature
    return {**quality, **options, "texts": texts, "sampler": sampler, "temperature": temperature,
            "steps": length if pipe.is_autoregressive else steps, "seed": seed, "batch_size": batch_size,
            "judge": judge, "independent_judge": independent_judge,
            "wall_s": wall, "tokens_per_s": samples.numel() / wall, "forward_passes": passes,
            "peak_memory_mb": peak, "dtype": str(pipe.dtype).removeprefix("torch.")}


def word_figures(texts: list[str], words: Set[str]) -> dict:
    rate = real_word_rate(texts, words)
    return {"real_word_rate": rate["real_word_rate"], "real_word_rate_se": rate["stderr"],
            "words_scored": rate["n_words"], "word_list_size": len(words)}


def generation_summary(g: dict) -> str:
    """One line for the terminal; gen-PPL with its unit and token count (per dlm or per judge token)."""
    judged = ""
    if "gen_ppl" in g:
        unit = g.get("gen_ppl_unit", "per dlm token")
        scored = g.get("judge_tokens", g.get("tokens"))
        judged = f"gen-PPL {g['gen_ppl']:.3f} {unit} (over {scored} {unit.removeprefix('per ')}s) under {g['judge']}, "
    judged += mauve_summary(g)
    if "independent_gen_ppl" in g:
        judged += (f"independent gen-PPL {g['independent_gen_ppl']:.2f} {g['independent_gen_ppl_unit']} under "
                   f"{g['independent_judge']}, ")
        judged += f"independent MAUVE {g['independent_mauve']:.3f}, " if "independent_mauve" in g else ""
    return (f"{g['samples']} samples × {g['length']} tokens ({g['sampler']}, {g['steps']} steps): {judged}"
            f"unigram entropy {g['unigram_entropy']:.3f} nats, distinct-2 {g['distinct_2']:.3f}, "
            f"self-BLEU {g['self_bleu']:.3f}{real_words(g)}; "
            f"{g['tokens_per_s']:,.0f} tokens/s, {g['forward_passes']} forward passes")


def real_words(g: dict) -> str:
    if g.get("real_word_rate") is None:
        return ""
    held_out = g.get("real_word_rate_held_out")
    return (f", real words {g['real_word_rate']:.3f} of {g['words_scored']:,}"
            + (f" (held-out text {held_out:.3f})" if held_out is not None else ""))


def mauve_summary(g: dict) -> str:
    if "mauve" not in g:
        return ""
    interval = (f" [{g['mauve_interval_low']:.3f}, {g['mauve_interval_high']:.3f}]"
                if "mauve_interval_low" in g else "")
    return (f"MAUVE {g['mauve']:.3f}{interval} ({g.get('mauve_features', 'judge')} features, "
            f"{g['mauve_p_samples']} vs {g['mauve_q_samples']} texts, {g['mauve_num_clusters']} clusters), ")
