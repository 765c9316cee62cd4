"""The reverse process of a masked diffusion model: every sampler in dlm, behind one engine.

A `Denoiser` turns a `Canvas` (fixed text, [MASK]s to fill, padding) into text. Each step runs the
model over the canvas (or the current block), draws a token for every candidate position from
the model's distribution (temperature, top-k, top-p, repetition penalty; float64 Gumbel noise),
and commits some of them:

* ancestral — MDLM's reverse step: each mask is revealed with probability (α_s − α_t)/(1 − α_t);
* confidence / margin / entropy / random — commit the positions the model is surest of (or a
  random set); how many follows the noise schedule, so after the step from t to s about
  n·(1 − α_s) masks remain (LLaDA); `threshold` also commits every position whose drawn token has
  probability above it (Fast-dLLM parallel decoding).

On top: semi-autoregressive blocks with an exact prefix KV cache or an approximate dual cache,
ReMDM remasking, editing of visible tokens, classifier-free guidance, a stop at the first
completed [EOS], and reuse of the last logits when a step changed nothing (MDLM's cache).
`Denoiser.steps()` yields every intermediate state, so a terminal, a server or a test can watch.

Every row draws from its own generator (seed + row), so its sample is the same alone or in a
batch. Prompts and template text are never changed; no [MASK] is left at the end.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from dlm.diffusion.schedules import get_schedule
from dlm.errors import DlmError
from dlm.sampling.base import (
    apply_repetition_penalty,
    gumbel_noise,
    position_scores,
    row_generators,
    row_uniforms,
    sample_categorical,
)
from dlm.sampling.canvas import Canvas, attention_mask
from dlm.sampling.config import SamplerConfig
from dlm.special_ids import SpecialIds


@dataclass
class DenoiseStep:
    """One step of the reverse process, as streamed to watchers. Masks are (B, T) bool."""
    step: int
    tokens: torch.Tensor
    """(B, T) the canvas after the step (a copy)."""
    committed: torch.Tensor
    """Masks that became tokens in this step."""
    remasked: torch.Tensor
    """Tokens turned back into masks (ReMDM)."""
    edited: torch.Tensor
    """Visible tokens replaced by another token (editing)."""
    window: tuple[int, int]
    """Columns [start, end) this step worked on (a block, or the whole generated region)."""
    forward_passes: int


@dataclass
class GenerationResult:
    tokens: torch.Tensor
    """(B, T) the final canvas, left padding included; [PAD] after an [EOS] that ended a row."""
    valid: torch.Tensor
    """(B, T) bool: False at left padding."""
    generated: torch.Tensor
    """(B, T) bool: columns that were not fixed text (what the sampler wrote)."""
    forward_passes: int
    steps: int
    pad_id: int

    def rows(self) -> list[list[int]]:
        """Each row without its left padding and without the [PAD]s after an ending [EOS]."""
        rows = zip(self.tokens.tolist(), self.valid.tolist(), self.generated.tolist(), strict=True)
        return [[tok for tok, v, g in zip(*row, strict=True) if v and not (g and tok == self.pad_id)] for row in rows]


class Denoiser:
    def __init__(self, model: torch.nn.Module, canvas: Canvas, config: SamplerConfig, special: SpecialIds,
                 seeds: list[int] | None = None):
        self.model, self.cfg, self.special = model, config.validate(), special
        self.canvas = canvas
        self.x = canvas.tokens.clone()
        self.fixed = canvas.fixed.clone()
        self.generated = ~canvas.fixed & canvas.valid
        B, T = self.x.shape
        self.device = self.x.device
        # Row i draws from seed + i, or from seeds[i] when given (a server batching unrelated requests).
        self.generators = row_generators(config.seed, B, self.device, seeds)
        self.confidence = torch.zeros(B, T, dtype=torch.float64, device=self.device)  # p(token) when committed
        self.done = [False] * B
        self.forward_passes = 0
        self.step_count = 0
        self.schedule = get_schedule(config.schedule)
        self.time_conditioned = bool(getattr(getattr(model, "cfg", None), "time_conditioning", False))
        # finished blocks read token-causally (model.clean_causal), as the model's clean copy was in training
        self.clean_causal = bool(getattr(getattr(model, "cfg", None), "clean_causal", False))
        self.cache = None
        self._cache_filled = 0  # prefix cache: columns [0, filled) hold final keys
        self._dual_window: tuple[int, int] | None = None  # dual cache: the window it was refreshed for
        self._last: tuple[tuple[int, int], torch.Tensor, torch.Tensor] | None = None  # (window, x, logits)
        self._suppress = [special.mask, special.pad, special.bos]
        self._masks: dict[tuple, torch.Tensor | None] = {}  # attention masks by layout (the canvas is fixed)

    # --- model calls -------------------------------------------------------------------------

    def _windows(self) -> list[tuple[int, int]]:
        T, start = self.x.shape[1], self.canvas.gen_start
        if not self.cfg.block_length:
            return [(start, T)] if start < T else []
        if self.cfg.aligned_blocks and start < T:  # back to the start of the block holding the first mask
            start -= self._block_offset(start)
        return [(s, min(s + self.cfg.block_length, T)) for s in range(start, T, self.cfg.block_length)]

    def _block_offset(self, column: int) -> int:
        """How far `column` lies into its block, the same in every row (aligned blocks)."""
        valid = self.canvas.valid[:, column]
        offsets = set((self.canvas.positions[:, column][valid] % self.cfg.block_length).tolist())
        if len(offsets) > 1:
            raise DlmError("aligned blocks: the rows' prompt lengths differ modulo block_length; "
                           "sample them in separate batches (Pipeline.sample does)")
        return offsets.pop() if offsets else 0

    def _call(self, x: torch.Tensor, t: torch.Tensor, columns: tuple[int, int], mask: torch.Tensor | None,
              cache_window: tuple[int, int] | None) -> torch.Tensor:
        """One forward over canvas columns [a, b) of `x`; with guidance, conditional and
        unconditional rows go through together."""
        kwargs = {}
        if self.canvas.padded:
            kwargs["positions"] = self.canvas.positions[:, columns[0]:columns[1]]
        if mask is not None:
            kwargs["attn_mask"] = mask
        if self.cfg.guidance_scale:
            a, b = columns
            uncond = x.masked_fill(self.canvas.fixed[:, a:b] & self.canvas.valid[:, a:b], self.special.mask)
            x, t = torch.cat((x, uncond)), torch.cat((t, t))
            kwargs = {k: torch.cat((v, v)) if v.shape[0] > 1 else v for k, v in kwargs.items()}
        if cache_window is not None:
            kwargs["cache"] = self.cache
            self.cache.window = cache_window
        logits = self.model(x, t=t if self.time_conditioned else None, **kwargs).float()
        self.forward_passes += 1
        if self.cfg.guidance_scale:
            cond, uncond = logits.chunk(2)
            logits = cond + self.cfg.guidance_scale * (cond - uncond)
        return logits

    def _mask(self, block_causal: bool, query: tuple[int, int], keys: int,
              block_start: int | None = None) -> torch.Tensor | None:
        """`block_start`: the current block's first column (the blocks before it are finished)."""
        causal_before = block_start if block_causal and self.clean_causal else None
        key = (block_causal, query, keys, causal_before)
        if key not in self._masks:
            self._masks[key] = attention_mask(self.canvas, self.cfg.block_length, block_causal, query, keys,
                                              aligned=self.cfg.aligned_blocks, causal_before=causal_before)
        return self._masks[key]

    def _new_cache(self) -> None:
        rows = self.x.shape[0] * (2 if self.cfg.guidance_scale else 1)
        self.cache = self.model.new_cache(rows, max_len=self.x.shape[1])

    def logits(self, window: tuple[int, int], t: torch.Tensor, plain: bool = False) -> torch.Tensor:
        """(B, end − start, V) logits for the window's columns. `plain`: one full forward, no cache."""
        s, e = window
        key = (window, plain)
        if (self.cfg.reuse_logits and not self.time_conditioned and self._last is not None
                and self._last[0] == key and torch.equal(self._last[1], self.x)):
            return self._last[2]
        T, cfg = self.x.shape[1], self.cfg
        block_causal = bool(cfg.block_length) and cfg.block_context == "prefix" and not plain
        if plain or not cfg.kv_cache:
            end = e if block_causal else T
            mask = self._mask(block_causal, (0, end), end, s)
            logits = self._call(self.x[:, :end], t, (0, end), mask, None)[:, s:e]
        elif block_causal:  # exact prefix cache: each finished block is encoded once, then the block alone
            if self.cache is None:
                self._new_cache()
            # The finished blocks not yet cached ride along with the block's first step: one forward
            # over [a, e), block-causal, so each finished block still sees only itself and the past.
            a = self._cache_filled
            mask = self._mask(True, (a, e), e, s)
            logits = self._call(self.x[:, a:e], t, (a, e), mask, (a, e))[:, s - a:]
            self._cache_filled = s
        else:  # dual cache: refresh every column at a block's first step, then recompute the block only
            if self.cache is None:
                self._new_cache()
            if self._dual_window != window:
                logits = self._call(self.x, t, (0, T), self._mask(False, (0, T), T), (0, T))[:, s:e]
                self._dual_window = window
            else:
                mask = self._mask(False, (s, e), T)
                logits = self._call(self.x[:, s:e], t, (s, e), mask, (s, T))
        logits[..., self._suppress] = float("-inf")  # SUBS: never propose [MASK]; never [PAD]/[BOS]
        if cfg.eos_penalty:
            logits[..., self.special.eos] -= cfg.eos_penalty
        self._last = (key, self.x.clone(), logits)
        return logits

    # --- one step ----------------------------------------------------------------------------

    def _remask_prob(self, alpha_t: float, alpha_s: float) -> float:
        eta = self.cfg.remask
        if not eta or alpha_t <= 0:
            return 0.0
        ratio = (1.0 - alpha_s) / alpha_t
        return min(eta, ratio) if self.cfg.remask_schedule == "cap" else min(1.0, eta * ratio)

    def _uniform(self, width: int) -> torch.Tensor:
        return row_uniforms(self.generators, width, self.device)

    def _step(self, window: tuple[int, int], t_value: float, alpha_t: float, alpha_s: float, alpha_top: float,
              n_generated: torch.Tensor, edit_only: bool = False) -> DenoiseStep:
        """One step from t to s on the window's columns; n_generated (B,): masks the window started with."""
        cfg, special = self.cfg, self.special
        s, e = window
        B, W = self.x.shape[0], e - s
        xs = self.x[:, s:e]
        live = ~torch.tensor(self.done, device=self.device)[:, None]  # (B, 1): rows still decoding
        masked = (xs == special.mask) & live & (not edit_only)  # (B, W)
        editable = self.generated[:, s:e] & ~self.fixed[:, s:e] & (xs != special.mask) & live
        if self.cfg.block_length and not edit_only:  # the noise level a block-wise model sees: its masked share
            t = (self.x == special.mask).sum(1).double() / self.generated.sum(1).clamp(min=1)
        else:
            t = torch.full((B,), t_value, dtype=torch.float64, device=self.device)
        logits = self.logits(window, t.float(), plain=edit_only)  # (B, W, V)
        if cfg.repetition_penalty != 1.0:
            visible = (self.x != special.mask) & self.canvas.valid
            logits = apply_repetition_penalty(logits, self.x, visible, cfg.repetition_penalty, special)

        # Draw a token at every candidate position: masks, and visible tokens when editing. Each row's
        # noise covers exactly its own candidates, in position order (batch-independent).
        editing = cfg.edit_threshold > 0
        cand = masked | editable if editing else masked
        counts = cand.sum(1).tolist()
        drawn = xs.clone()
        p_drawn = torch.zeros(B, W, dtype=torch.float64, device=self.device)  # model probability of the draw
        score = torch.full((B, W), float("-inf"), dtype=torch.float64, device=self.device)
        p_current = torch.ones(B, W, dtype=torch.float64, device=self.device)
        if sum(counts):
            cand_logits = logits[cand].double()  # (N, V), rows in order
            gumbel = None
            if cfg.temperature > 0:
                gumbel = torch.cat([gumbel_noise((n, cand_logits.shape[-1]), g, self.device)
                                    for n, g in zip(counts, self.generators, strict=True) if n])
            ids, _ = sample_categorical(cand_logits, cfg.temperature, cfg.top_k, cfg.top_p, gumbel=gumbel)
            probs = cand_logits.softmax(-1)  # the model's own distribution ranks positions
            drawn[cand] = ids.to(drawn.dtype)
            p_drawn[cand] = probs.gather(-1, ids[:, None]).squeeze(-1)
            if cfg.sampler not in ("random", "ancestral"):
                score[cand] = position_scores(probs, ids, cfg.sampler)
            if editing:
                p_current[cand] = probs.gather(-1, xs[cand][:, None]).squeeze(-1)

        sigma = 0.0 if edit_only else self._remask_prob(alpha_t, alpha_s)
        n_masked, n_visible = masked.sum(1), editable.sum(1)  # (B,)
        if cfg.sampler == "ancestral":  # each mask revealed, each generated token remasked, independently
            reveal = (alpha_s - (1 - sigma) * alpha_t) / max(1 - alpha_t, 1e-12)
            commit = masked & (self._uniform(W) < reveal)
            remask = editable & (self._uniform(W) < sigma) if sigma else torch.zeros_like(masked)
        else:
            n_remask = torch.minimum(torch.round(sigma * n_visible.double()).long(), n_visible)
            target = torch.round(n_generated.to(self.device).double() * (1.0 - alpha_s)
                                 / max(1.0 - alpha_top, 1e-12)).long()
            n_commit = (n_masked + n_remask - target).clamp(min=0)
            n_commit = torch.minimum(n_commit, n_masked)
            if cfg.threshold:
                sure = ((p_drawn > cfg.threshold) & masked).sum(1)
                n_commit = torch.maximum(torch.maximum(n_commit, sure), (n_masked > 0).long())
                n_remask = torch.minimum(n_remask, (target - n_masked + n_commit).clamp(min=0))
            if cfg.sampler == "random":
                score = torch.where(masked, self._uniform(W), score)
            # Scores are ranked at 1e-6 resolution: positions the model cannot tell apart (an
            # all-[MASK] canvas is position-symmetric) then stay tied and are taken left to right,
            # instead of being ordered by float noise that depends on the batch's shape.
            score = torch.round(score * 1e6).masked_fill(~masked, float("-inf"))
            commit = masked & (_ranks(score, descending=True) < n_commit[:, None])
            if bool(n_remask.any()):  # ReMDM: the least confident (or random) generated tokens
                key = self._uniform(W) if cfg.remask_by == "random" else self.confidence[:, s:e]
                key = key.masked_fill(~editable, float("inf"))
                remask = editable & (_ranks(key, descending=False) < n_remask[:, None])
            else:
                remask = torch.zeros_like(masked)
        edited = torch.zeros_like(masked)
        if editing:
            edited = editable & ~remask & (drawn != xs) & (p_current < cfg.edit_threshold)
        write = commit | edited
        self.x[:, s:e] = torch.where(write, drawn, xs).masked_fill(remask, special.mask)
        self.confidence[:, s:e] = torch.where(write, p_drawn, self.confidence[:, s:e])

        if cfg.stop_at_eos:
            self._stop_rows_at_eos()
        self.step_count += 1
        full = torch.zeros_like(self.x, dtype=torch.bool)

        def widen(part: torch.Tensor) -> torch.Tensor:
            out = full.clone()
            out[:, s:e] = part
            return out

        return DenoiseStep(self.step_count, self.x.clone(), widen(commit), widen(remask), widen(edited),
                           window, self.forward_passes)

    def _stop_rows_at_eos(self) -> None:
        """End each row at its first [EOS] once no mask is left before it: later columns become [PAD]."""
        special = self.special
        for b in range(self.x.shape[0]):
            if self.done[b]:
                continue
            row, gen = self.x[b], self.generated[b]
            eos = (gen & (row == special.eos)).nonzero()
            if eos.numel() == 0:
                continue
            first = int(eos[0])
            if bool(((row[:first] == special.mask) & gen[:first]).any()):
                continue
            after = gen.clone()
            after[: first + 1] = False
            row[after] = special.pad
            self.fixed[b] |= gen  # nothing in this row changes any more
            self.done[b] = True

    # --- the loop ----------------------------------------------------------------------------

    def steps(self) -> Iterator[DenoiseStep]:
        """Run the sampler, yielding the state after every step."""
        cfg, special = self.cfg, self.special
        windows = self._windows()
        steps_per_window = max(1, -(-cfg.steps // max(len(windows), 1)))
        times = torch.linspace(1.0, 0.0, steps_per_window + 1, dtype=torch.float64)
        alphas = self.schedule.alpha(times).clamp(0.0, 1.0)
        alphas[-1] = 1.0  # the last step reveals everything, whatever the schedule's α(0)
        for window in windows:
            s, e = window
            n_generated = (self.x[:, s:e] == special.mask).sum(1)  # masks to fill in this window
            for k in range(steps_per_window):
                if not bool((self.x[:, s:e] == special.mask).any()):
                    break
                yield self._step(window, float(times[k]), float(alphas[k]), float(alphas[k + 1]),
                                 float(alphas[0]), n_generated)
        assert not bool(((self.x == special.mask) & self.canvas.valid).any()), "sampler left a [MASK]"
        if cfg.edit_rounds and windows:
            full = (windows[0][0], self.x.shape[1])
            for _ in range(cfg.edit_rounds):
                state = self._step(full, 0.0, 1.0, 1.0, 0.0, torch.zeros(self.x.shape[0]), edit_only=True)
                yield state
                if not state.edited.any():
                    break

    def run(self) -> GenerationResult:
        for _ in self.steps():
            pass
        return self.result()

    def result(self) -> GenerationResult:
        return GenerationResult(self.x.clone(), self.canvas.valid.clone(), self.generated.clone(),
                                self.forward_passes, self.step_count, self.special.pad)


def _ranks(key: torch.Tensor, descending: bool) -> torch.Tensor:
    """(B, W) rank of each entry within its row (0 = first), ties broken left to right."""
    order = key.argsort(dim=1, descending=descending, stable=True)
    return torch.empty_like(order).scatter_(1, order, torch.arange(key.shape[1], device=key.device).expand_as(order))


@torch.no_grad()
def diffusion_generate(model: torch.nn.Module, canvas: Canvas, config: SamplerConfig,
                       special: SpecialIds) -> GenerationResult:
    """Fill every [MASK] of the canvas; see the module docstring for what the options do."""
    return Denoiser(model, canvas, config, special).run()


def diffusion_stream(model: torch.nn.Module, canvas: Canvas, config: SamplerConfig,
                     special: SpecialIds) -> Iterator[DenoiseStep]:
    """Like `diffusion_generate`, yielding the canvas after every step."""
    with torch.no_grad():
        yield from Denoiser(model, canvas, config, special).steps()
