"""Samplers: token ids in, token ids out (they never see text)."""

from dlm.sampling.autoregressive import ar_generate, ar_stream
from dlm.sampling.base import SpecialIds
from dlm.sampling.canvas import Canvas, build_canvas, prompt_canvas
from dlm.sampling.config import ORDERS, SamplerConfig
from dlm.sampling.diffusion import Denoiser, DenoiseStep, GenerationResult, diffusion_generate, diffusion_stream

__all__ = ["ORDERS", "Canvas", "DenoiseStep", "Denoiser", "GenerationResult", "SamplerConfig", "SpecialIds",
           "ar_generate", "ar_stream", "build_canvas", "diffusion_generate", "diffusion_stream", "prompt_canvas"]
