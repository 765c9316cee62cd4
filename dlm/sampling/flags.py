"""Command-line flags for `SamplerConfig`, shared by `dlm sample` and `dlm eval --gen`."""

from __future__ import annotations

import argparse

from dlm.sampling.config import AR_TEMPERATURE, ORDERS, SamplerConfig

DEFAULTS = SamplerConfig()  # one source of defaults for the flags, the API and the server


def add_sampler_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("sampling (diffusion runs; AR runs use temperature, top-k/p, "
                                  "repetition penalty, stop-at-eos and seed)")
    g.add_argument("--sampler", default=None, choices=ORDERS,
                   help="unmasking order: confidence (max probability), margin (top-1 − top-2), entropy, "
                   f"random, or ancestral (MDLM's reverse step). Default: {DEFAULTS.sampler} (measured, "
                   "docs/study.md, 'The default sampler', and docs/chat.md); confidence with --threshold 0.9 for "
                   "block-diffusion runs that do not decode with --speculative (docs/block-diffusion.md)")
    g.add_argument("--temperature", type=float, default=None,
                   help=f"softmax temperature; 0 = greedy (default {DEFAULTS.temperature:g} for diffusion runs, "
                   f"{AR_TEMPERATURE:g} for AR runs)")
    g.add_argument("--top-k", type=int, default=0, help="draw from the k most likely tokens (0 = all)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    g.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="> 1 discourages tokens already in the text (special tokens exempt); 1 = off")
    g.add_argument("--schedule", default=DEFAULTS.schedule,
                   help=f"noise schedule that sets how many tokens each step commits (default {DEFAULTS.schedule})")
    g.add_argument("--threshold", type=float, default=None,
                   help="parallel decoding (Fast-dLLM): also commit every position whose token has probability "
                   "above this; ends early when nothing is masked. 0 = off (the default; 0.9 with confidence order "
                   "for block-diffusion runs)")
    g.add_argument("--block-length", type=int, default=None,
                   help="semi-autoregressive: decode blocks of this many tokens left to right (0 = whole canvas; "
                   "default 0, or a block-diffusion run's block size)")
    g.add_argument("--block-context", default=None, choices=("canvas", "prefix"),
                   help="what a block sees: the whole canvas (LLaDA; the default) or only the text before it "
                   "(BD3-LM; the default of block-diffusion runs)")
    g.add_argument("--kv-cache", action="store_true", default=None,
                   help="with --block-length: cache keys/values outside the block (exact with --block-context "
                   "prefix; the approximate dual cache with canvas). On by default for block-diffusion runs")
    g.add_argument("--no-reuse-logits", dest="reuse_logits", action="store_false",
                   help="run the model even when a step changed nothing (default: reuse its logits, exact)")
    g.add_argument("--remask", type=float, default=0.0,
                   help="ReMDM remasking strength η in [0, 1]: generated tokens may be masked again and redone")
    g.add_argument("--remask-schedule", default="cap", choices=("cap", "rescale"), help="ReMDM σ_t (default cap)")
    g.add_argument("--remask-by", default="confidence", choices=("confidence", "random"),
                   help="which tokens to remask first (default: the least confident)")
    g.add_argument("--edit-threshold", type=float, default=0.0,
                   help="editing (models trained with diffusion.edit_prob > 0): redo visible tokens whose "
                   "probability is below this. 0 = off")
    g.add_argument("--edit-rounds", type=int, default=0, help="editing passes after the last mask is filled")
    g.add_argument("--guidance-scale", type=float, default=0.0,
                   help="classifier-free guidance w: cond + w·(cond − uncond), uncond = prompt masked. 0 = off")
    g.add_argument("--eos-penalty", type=float, default=0.0,
                   help="subtract this from the end token's logit everywhere (fewer, surer ends); 0 = off")
    g.add_argument("--speculative", action="store_true", default=None,
                   help="self-speculative decoding for block models with a next-token clean copy (the CPU "
                   "preset's): each pass checks drafted tokens with the clean copy and drafts the next block; "
                   "the text follows the clean copy's distribution exactly; the default of such runs, unless "
                   "--sampler or --threshold is given (docs/block-diffusion.md)")
    g.add_argument("--drafts", type=int, default=None,
                   help="with --speculative: tokens drafted per pass, 0 to the block size − 1 (0: none, the clean copy "
                   "writes alone; default the fastest on a CPU: 2 for one sample, 0 for a batch or a BPE vocabulary); "
                   "a speed setting, the text does not depend on it")
    g.add_argument("--stop-at-eos", action="store_true",
                   help="variable length: end a sample at its first [EOS] (the rest becomes [PAD])")


def sampler_options(args: argparse.Namespace) -> dict:
    """The SamplerConfig fields set by `add_sampler_flags` (steps and seed are the caller's)."""
    names = ("sampler", "temperature", "top_k", "top_p", "repetition_penalty", "schedule", "threshold",
             "block_length", "block_context", "kv_cache", "reuse_logits", "remask", "remask_schedule",
             "remask_by", "edit_threshold", "edit_rounds", "guidance_scale", "eos_penalty", "stop_at_eos",
             "speculative", "drafts")
    options = {name: getattr(args, name) for name in names}
    return {k: v for k, v in options.items() if v is not None}  # unset: the model's default
