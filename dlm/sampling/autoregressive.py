"""Left-to-right sampling for the causal twin, with a KV cache (one new token per forward).

It takes the same `SamplerConfig` as the diffusion samplers and honours what applies to
left-to-right decoding: temperature, top-k, top-p, repetition penalty, stop at [EOS], per-row
seeds. Prompts of different lengths are left-padded behind a [BOS] each, with their own RoPE
positions and padding hidden from attention, so a row's sample does not depend on the batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from dlm.sampling.base import apply_repetition_penalty, gumbel_noise, row_generators, sample_categorical
from dlm.sampling.canvas import attention_mask, build_canvas
from dlm.sampling.config import SamplerConfig
from dlm.sampling.denoiser import DenoiseStep, GenerationResult
from dlm.special_ids import SpecialIds


class ARDecoder:
    def __init__(self, model: torch.nn.Module, prompts: list[list[int]], length: int, config: SamplerConfig,
                 special: SpecialIds, device: torch.device | str = "cpu", seeds: list[int] | None = None):
        self.model, self.cfg, self.special, self.length = model, config.validate(), special, length
        self.canvas = build_canvas([[special.bos, *p] + [None] * length for p in prompts], special, device)
        self.x = self.canvas.tokens.clone()
        self.start = self.x.shape[1] - length  # first generated column (the same in every row)
        self.generators = row_generators(config.seed, len(prompts), self.x.device, seeds)
        self.done = torch.zeros(len(prompts), dtype=torch.bool, device=self.x.device)
        self.forward_passes = 0
        self.step_count = 0

    def _forward(self, a: int, b: int, cache) -> torch.Tensor:
        kwargs = {"cache": cache}
        if self.canvas.padded:
            kwargs["positions"] = self.canvas.positions[:, a:b]
            kwargs["attn_mask"] = attention_mask(self.canvas, query=(a, b), keys=b)
        self.forward_passes += 1
        return self.model(self.x[:, a:b], **kwargs)[:, -1].float()

    def steps(self) -> Iterator[DenoiseStep]:
        """Decode, yielding the canvas after every token (what it committed)."""
        yield from self._decode(frames=True)

    def run(self) -> GenerationResult:
        """Decode without making a frame per token (`sample` when nothing watches the steps)."""
        for _ in self._decode(frames=False):
            pass
        return self.result()

    def _decode(self, frames: bool) -> Iterator[DenoiseStep | None]:
        """The loop; with `frames` False it yields None (a frame is a copy of the canvas and a few masks, a
        noticeable share of a token's time at batch 1 on a CPU)."""
        cfg, special = self.cfg, self.special
        B, T = self.x.shape
        cache = self.model.new_cache(B, max_len=T)
        logits = self._forward(0, self.start, cache)
        # Added to each token's logits in one operation: −inf for the ids never drawn, −the [EOS] penalty.
        bias = torch.zeros(logits.shape[-1], dtype=logits.dtype, device=logits.device)
        bias[[special.mask, special.pad, special.bos]] = float("-inf")
        bias[special.eos] -= cfg.eos_penalty
        for i in range(self.length):
            col = self.start + i
            logits = logits + bias
            if cfg.repetition_penalty != 1.0:
                visible = self.canvas.valid & (self.x != special.mask)
                logits = apply_repetition_penalty(logits[:, None], self.x, visible, cfg.repetition_penalty,
                                                  special)[:, 0]
            # One draw per live row, each from the row's own generator (batch-independent).
            live = ~self.done
            gumbel = None
            if cfg.temperature > 0:
                gumbel = torch.cat([gumbel_noise((1, logits.shape[-1]), g, self.x.device) for g in self.generators])
            token, _ = sample_categorical(logits.double(), cfg.temperature, cfg.top_k, cfg.top_p, gumbel=gumbel)
            self.x[:, col] = torch.where(live, token, special.pad)
            if cfg.stop_at_eos:
                self.done |= token == special.eos
            self.step_count = i + 1
            if frames:
                committed = torch.zeros_like(self.x, dtype=torch.bool)
                committed[:, col] = live
                nothing = torch.zeros_like(committed)
                yield DenoiseStep(i + 1, self.x.clone(), committed, nothing, nothing, (col, col + 1),
                                  self.forward_passes)
            else:
                yield None
            if cfg.stop_at_eos and bool(self.done.all()):
                self.x[:, col + 1:] = special.pad
                break
            if i + 1 < self.length:
                logits = self._forward(col, col + 1, cache)

    def result(self) -> GenerationResult:
        """The canvas without the [BOS]s: each row's becomes left padding, and the first column,
        then padding in every row, is dropped, so the tokens are (B, P + length) like a diffusion run's."""
        tokens, valid = self.x.clone(), self.canvas.valid.clone()
        first = valid.long().argmax(1)
        rows = torch.arange(len(valid))
        tokens[rows, first], valid[rows, first] = self.special.pad, False
        generated = torch.zeros_like(valid)
        generated[:, self.start:] = True
        return GenerationResult(tokens[:, 1:], valid[:, 1:], generated[:, 1:], self.forward_passes,
                                self.step_count, self.special.pad)


@torch.no_grad()
def ar_generate(model: torch.nn.Module, prompts: list[list[int]], length: int, config: SamplerConfig,
                special: SpecialIds) -> GenerationResult:
    """Sample `length` tokens after each prompt (token ids), left to right."""
    return ARDecoder(model, prompts, length, config, special, model_device(model)).run()


def ar_stream(model: torch.nn.Module, prompts: list[list[int]], length: int, config: SamplerConfig,
              special: SpecialIds) -> Iterator[DenoiseStep]:
    with torch.no_grad():
        yield from ARDecoder(model, prompts, length, config, special, model_device(model)).steps()


def model_device(model: torch.nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
