"""The Python API: `dlm.load(run_dir)` → a Pipeline with the model, tokenizer and `generate`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from dlm.config import RunConfig
from dlm.errors import DlmError
from dlm.model import Transformer
from dlm.runtime import autocast, pick_device, pick_dtype
from dlm.sampling import DIFFUSION_SAMPLERS, ar_generate, diffusion_generate
from dlm.tokenizers import Tokenizer, load_tokenizer
from dlm.train.checkpoint import find_checkpoint, load_model_weights


@dataclass
class Pipeline:
    model: Transformer
    tokenizer: Tokenizer
    config: RunConfig
    checkpoint: Path
    device: torch.device
    dtype: torch.dtype
    weights: str = "raw"
    """Which weights were loaded: 'ema' or 'raw'."""

    @property
    def is_autoregressive(self) -> bool:
        return self.model.cfg.causal

    def encode_prompt(self, prompt: str, length: int) -> torch.Tensor:
        ids = self.tokenizer.encode(prompt) if prompt else []
        block = self.model.cfg.block_size
        if len(ids) + length > block:
            raise DlmError(f"prompt ({len(ids)} tokens) plus length {length} exceeds the model's context of "
                           f"{block} tokens; shorten the prompt or lower --length")
        return torch.tensor([ids], dtype=torch.long, device=self.device)

    @torch.no_grad()
    def generate_ids(self, prompt: str = "", length: int = 256, steps: int = 256, sampler: str = "confidence",
                     temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                     num_samples: int = 1) -> torch.Tensor:
        if length < 1 or num_samples < 1 or steps < 1:
            raise DlmError("--length, --steps and --num-samples must be at least 1")
        if not 0 < top_p <= 1:
            raise DlmError(f"--top-p={top_p} must be in (0, 1]")
        if temperature < 0:
            raise DlmError(f"--temperature={temperature} must be ≥ 0")
        prompt_ids = self.encode_prompt(prompt, length).expand(num_samples, -1)
        generator = torch.Generator().manual_seed(seed)
        tok = self.tokenizer
        self.model.eval()
        with autocast(self.device, self.dtype):
            if self.is_autoregressive:
                return ar_generate(self.model, prompt_ids, length, tok.bos_id, temperature,
                                   top_k, top_p, generator, suppress_ids=(tok.mask_id, tok.pad_id, tok.bos_id))
            if sampler not in DIFFUSION_SAMPLERS:
                raise DlmError(f"unknown sampler {sampler!r}; choose one of {', '.join(DIFFUSION_SAMPLERS)}")
            return diffusion_generate(self.model, prompt_ids, length, steps, tok.mask_id, sampler,
                                      temperature, top_k, top_p, generator, suppress_ids=(tok.pad_id, tok.bos_id))

    def generate(self, prompt: str = "", **kwargs) -> list[str]:
        """Sample `num_samples` continuations of `prompt`; each string includes the prompt."""
        ids = self.generate_ids(prompt, **kwargs)
        return [self.tokenizer.decode(row.tolist()) for row in ids]


def load(path: str | Path, device: str = "auto", dtype: str = "auto", weights: str = "auto") -> Pipeline:
    """Load a training run folder (its newest intact checkpoint) or one checkpoint folder.

    weights: 'ema' (the averaged weights), 'raw', or 'auto' (EMA when the checkpoint has it).
    """
    if weights not in ("auto", "ema", "raw"):
        raise DlmError(f"weights={weights!r} is not one of auto, ema, raw")
    run_dir, ckpt = find_checkpoint(path)
    try:
        config = RunConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    except json.JSONDecodeError as e:
        raise DlmError(f"{run_dir / 'config.json'} is not valid JSON ({e}); restore it from the run") from None
    tokenizer = load_tokenizer(run_dir / "tokenizer.json")
    torch_device = pick_device(device)
    model = Transformer(config.model).to(torch_device)
    has_ema = (ckpt / "ema.safetensors").is_file()
    if weights == "ema" and not has_ema:
        raise DlmError(f"checkpoint {ckpt} has no EMA weights (trained with ema_decay=0); use --weights raw")
    use_ema = has_ema and weights != "raw"
    load_model_weights(model, ckpt, "ema.safetensors" if use_ema else "model.safetensors")
    model.eval()
    # Sampling runs in fp32 by default: it is cheap, and bf16 logits would coarsen probabilities.
    torch_dtype = torch.float32 if dtype == "auto" else pick_dtype(dtype, torch_device)
    return Pipeline(model, tokenizer, config, ckpt, torch_device, torch_dtype, "ema" if use_ema else "raw")
