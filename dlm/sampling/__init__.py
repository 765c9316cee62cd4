"""Samplers: token ids in, token ids out (they never see text)."""

from dlm.sampling.autoregressive import ar_generate
from dlm.sampling.diffusion import DIFFUSION_SAMPLERS, diffusion_generate

__all__ = ["ar_generate", "diffusion_generate", "DIFFUSION_SAMPLERS"]
