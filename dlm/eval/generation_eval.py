"""Sample, time and score: the `--gen` part of `dlm eval`.

Samples N sequences from a loaded run, records the wall time, tokens/s, forward passes and peak
memory, and scores the samples: unigram entropy, distinct-n and self-BLEU always; gen-PPL under
a judge (a dlm AR run or a Hugging Face causal LM, see dlm/eval/judges.py) when one is given;
MAUVE between the samples and as many random windows of the split, on the judge's features.
"""

from __future__ import annotations

import resource
import time

import numpy as np
import torch

from dlm.errors import DlmError
from dlm.eval.judges import Judge, judge_kind, judge_perplexity, load_judge
from dlm.eval.sample_metrics import sample_quality
from dlm.inference import AR_TEMPERATURE, Pipeline
from dlm.sampling.config import SamplerConfig


def check_judge(judge: str | None, mauve: bool = False) -> None:
    """Fail fast (before minutes of evaluation) on a judge path that cannot work."""
    if mauve and not judge:
        raise DlmError("--mauve needs --judge (an AR run or a Hugging Face causal LM folder): MAUVE compares "
                       "the judge's features of samples and text")
    if judge and judge_kind(judge) == "hf":
        from dlm.eval.hf_judge import import_transformers

        import_transformers()


def check_sampler_options(options: dict) -> None:
    """Fail fast on sampler options --gen cannot use (before minutes of likelihood evaluation)."""
    from dlm.sampling.config import SamplerConfig

    SamplerConfig.from_kwargs(**options)
    if options.get("stop_at_eos"):
        raise DlmError("--stop-at-eos gives samples of different lengths, which --gen does not score; drop it")


def evaluate_generation(pipe: Pipeline, split_tokens: np.ndarray, *, num_samples: int, length: int = 0, steps: int = 0,
                        batch_size: int = 64, seed: int = 0, judge: str | None = None, mauve: bool = False,
                        sampler_options: dict | None = None, independent_judge: str | None = None) -> dict:
    """Sample `num_samples` sequences of `length` tokens (default: the context) with `steps` denoising
    steps (default: `length`) from `pipe` and score them.

    sampler_options: passed as they are to `pipe.sample` (SamplerConfig fields: sampler, temperature, ...)
    and recorded in the result. judge: path of the judge (required for `mauve`). independent_judge: a
    second judge (e.g. the packaged `smollm2`, which knows nothing of the corpus) whose gen-PPL (and
    MAUVE, with `mauve`) of the same samples are reported as independent_gen_ppl, independent_mauve, ...
    """
    check_judge(judge, mauve)
    if independent_judge:
        check_judge(independent_judge)
    options = dict(sampler_options or {})
    check_sampler_options(options)
    scorer: Judge | None = load_judge(judge, pipe) if judge else None  # before sampling: fail fast
    second: Judge | None = load_judge(independent_judge, pipe) if independent_judge else None
    length = length or pipe.model.cfg.block_size
    steps = steps or length
    batches, passes, start = [], 0, time.perf_counter()
    if pipe.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for first in range(0, num_samples, batch_size):
        count = min(batch_size, num_samples - first)
        result = pipe.sample("", length=length, steps=steps, seed=seed + first, num_samples=count, **options)
        batches.append(result.tokens)
        passes += result.forward_passes  # real model calls: fewer than steps with caches, thresholds, reuse
    if pipe.device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    samples = torch.cat(batches).cpu()
    special = set(pipe.tokenizer.special_ids) - {pipe.tokenizer.eos_id}  # what was judged, as text
    peak = (torch.cuda.max_memory_allocated() if pipe.device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20
    quality = sample_quality(samples)
    if scorer is not None:
        quality.update(judge_perplexity(scorer, samples, batch_size))
    if mauve:
        from dlm.data.loader import RandomWindows
        from dlm.eval.mauve import mauve as mauve_score

        reference = RandomWindows(split_tokens, length, seed=seed).next_batch(num_samples)
        scores = mauve_score(scorer.features(samples, batch_size).numpy(),
                             scorer.features(reference, batch_size).numpy(), seed=seed)
        quality.update({k if k == "mauve" else f"mauve_{k}": v for k, v in scores.items()})
    if second is not None:
        quality.update({f"independent_{k}": v for k, v in judge_perplexity(second, samples, batch_size).items()})
        if mauve:
            scores = mauve_score(second.features(samples, batch_size).numpy(),
                                 second.features(reference, batch_size).numpy(), seed=seed)
            quality["independent_mauve"] = scores["mauve"]
    texts = [pipe.tokenizer.decode([i for i in row if i not in special]) for row in samples.tolist()]
    defaults = SamplerConfig()  # what an option left unset was (recorded, so the JSON says what ran)
    sampler = "autoregressive" if pipe.is_autoregressive else options.get("sampler", defaults.sampler)
    temperature = options.get("temperature", AR_TEMPERATURE if pipe.is_autoregressive else defaults.temperature)
    return {**quality, **options, "texts": texts, "sampler": sampler, "temperature": temperature,
            "steps": length if pipe.is_autoregressive else steps, "seed": seed, "batch_size": batch_size,
            "judge": judge, "independent_judge": independent_judge,
            "wall_s": wall, "tokens_per_s": samples.numel() / wall, "forward_passes": passes,
            "peak_memory_mb": peak, "dtype": str(pipe.dtype).removeprefix("torch.")}


def generation_summary(g: dict) -> str:
    """One line for the terminal; gen-PPL with its unit and token count (per dlm or per judge token)."""
    judged = ""
    if "gen_ppl" in g:
        unit = g.get("gen_ppl_unit", "per dlm token")
        scored = g.get("judge_tokens", g.get("tokens"))
        judged = f"gen-PPL {g['gen_ppl']:.3f} {unit} (over {scored} {unit.removeprefix('per ')}s) under {g['judge']}, "
    judged += f"MAUVE {g['mauve']:.3f}, " if "mauve" in g else ""
    if "independent_gen_ppl" in g:
        judged += (f"independent gen-PPL {g['independent_gen_ppl']:.2f} {g['independent_gen_ppl_unit']} under "
                   f"{g['independent_judge']}, ")
        judged += f"independent MAUVE {g['independent_mauve']:.3f}, " if "independent_mauve" in g else ""
    return (f"{g['samples']} samples × {g['length']} tokens ({g['sampler']}, {g['steps']} steps): {judged}"
            f"unigram entropy {g['unigram_entropy']:.3f} nats, distinct-2 {g['distinct_2']:.3f}, "
            f"self-BLEU {g['self_bleu']:.3f}; "
            f"{g['tokens_per_s']:,.0f} tokens/s, {g['forward_passes']} forward passes")
