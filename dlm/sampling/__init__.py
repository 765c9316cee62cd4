"""Samplers: token ids in, token ids out (they never see text).

    config.py          SamplerConfig: every sampling option, validated (no torch)
    flags.py           the command-line flags that map onto SamplerConfig (no torch)
    base.py            temperature, top-k/p, float64 Gumbel draws, repetition penalty
    canvas.py          fixed text + [MASK]s + left padding, and attention masks over it
    denoiser.py        the reverse process of a diffusion model: every order, blocks, caches, editing
    autoregressive.py  left-to-right decoding of the causal twin with a KV cache

The names below are imported on first use, so `dlm --help` does not load torch.
"""

from __future__ import annotations

import importlib

_HOMES = {
    "ORDERS": "config", "SamplerConfig": "config",
    "SpecialIds": "base",
    "Canvas": "canvas", "build_canvas": "canvas", "prompt_canvas": "canvas",
    "Denoiser": "denoiser", "DenoiseStep": "denoiser", "GenerationResult": "denoiser",
    "diffusion_generate": "denoiser", "diffusion_stream": "denoiser",
    "ARDecoder": "autoregressive", "ar_generate": "autoregressive", "ar_stream": "autoregressive",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'dlm.sampling' has no attribute {name!r}")
    return getattr(importlib.import_module(f"dlm.sampling.{_HOMES[name]}"), name)
