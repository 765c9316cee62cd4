"""Block diffusion (BD3-LM, Arriola et al. 2025): the NELBO as a sum over blocks.

The sequence x of L tokens is cut into L/B blocks of B tokens. The model is autoregressive over
blocks and a masked diffusion model inside each:

    −log p(x) = Σ_b −log p(x_b | x_<b) ≤ Σ_b NELBO_MDLM(x_b | x_<b),

each block's bound taken with its own noise level t_b, its tokens masked with probability 1 − α(t_b)
and scored with the MDLM weight −α'(t_b)/(1 − α(t_b)). Divided by L, the figure is a bound on the NLL
per token, like every other figure `dlm eval` reports.

One forward pass scores every block (the paper's vectorised form): the network reads the noisy
copy z and the clean copy x side by side, 2L tokens, both at positions 0..L−1, under one attention
mask —

* a noisy token of block b sees the noisy tokens of block b and the clean tokens of blocks < b;
* a clean token of block b sees the clean tokens of blocks ≤ b (block-causal), which is how the
  sampler's KV cache encodes each finished block (dlm.sampling, block_context=prefix).

Only the noisy half's logits are scored. B = L is MDLM (one block, the clean copy unseen); with
B = 1 the lone token of a block is masked or not, and E_t[w(t)·1{masked}] = 1, so the bound's
expectation is the exact next-token NLL of the network reading x_<l clean and [MASK] at l.

`copies=k` reads k noisy copies of each window beside its one clean copy, [z_1 … z_k | x], each with its
own noise: k draws of the bound for the price of k + 1 copies instead of 2k (the clean copy, half of
a step's work, is shared). The loss is their mean, still an unbiased estimate of the same bound.

`t_range=(lo, hi)` draws the noise levels from U[lo, hi] instead of U[0, 1] (the paper's clipped
schedules, a lower-variance training loss). Only (0, 1) keeps the loss a bound: a narrower range
drops part of the integral over t. `dlm eval` always uses (0, 1).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from dlm.diffusion.process import sample_t
from dlm.diffusion.schedules import Schedule
from dlm.model.block_attention import block_diffusion_mask, block_layout, check_block_size
from dlm.model.wrappers import unwrapped
from dlm.objectives.cross_entropy import token_cross_entropy
from dlm.objectives.mdlm import T_MIN, loss_weight
from dlm.objectives.output import LossOutput
from dlm.objectives.scored_rows import as_rows_argument, flat_rows, rows_nll, takes_rows


def reads_clean_causally(model: nn.Module) -> bool:
    """Whether the model reads finished blocks token-causally (ModelConfig.clean_causal), looking through
    the wrappers training puts around it (torch.compile's, DDP's): they do not pass `cfg` on."""
    return bool(getattr(getattr(unwrapped(model), "cfg", None), "clean_causal", False))


def sample_block_t(batch: int, n_blocks: int, device: torch.device | str = "cpu",
                   generator: torch.Generator | None = None, antithetic: bool = True,
                   t_range: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """(batch, n_blocks) noise levels, one per block, stratified over all of them when `antithetic`.
    With one block this is `sample_t` (the same draws as MDLM's)."""
    t = sample_t(batch * n_blocks, device, generator, antithetic=antithetic).view(batch, n_blocks)
    lo, hi = t_range
    return t if (lo, hi) == (0.0, 1.0) else lo + (hi - lo) * t


def block_diffusion_logits(model: nn.Module, z: torch.Tensor, x: torch.Tensor, block: int,
                           dense: bool = False, clean_rows: bool = False,
                           rows: torch.Tensor | None = None) -> torch.Tensor:
    """(B, kL, V) logits of the noisy copies z = [z_1 … z_k] (B, kL) given the clean copy x (B, L), in one
    forward pass; (B, (k+1)L, V) with `clean_rows`, the clean copy's own rows last. `dense`: through the
    dense mask of `block_diffusion_mask` (the reference the tests compare with). `rows` (dlm's Transformer,
    not dense): (N,) flat indices into those B·kL or B·(k+1)L rows; only their logits, (N, V), come back."""
    B, L = x.shape
    copies = z.shape[1] // L
    positions = torch.arange(L, device=x.device).repeat(copies + 1)[None]  # every copy at 0..L−1
    clean_causal = reads_clean_causally(model)
    if dense:
        mask = block_diffusion_mask(L, block, x.device, copies, clean_causal)
    else:
        mask = block_layout(L, block, copies, clean_causal, clean_rows)  # part by part, same softmax
    if rows is not None:
        assert not dense, "rows index the part-by-part layout's output"
        return model(torch.cat((z, x), dim=1), positions=positions, attn_mask=mask, rows=rows)
    logits = model(torch.cat((z, x), dim=1), positions=positions, attn_mask=mask)
    return logits if clean_rows else logits[:, :copies * L]


def _token_nll(model: nn.Module, x: torch.Tensor, masked: torch.Tensor, mask_id: int, block: int,
               clean_rows: bool = False, clean: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, kL) −log p_θ(x | z) at every position of k noisy copies, z = x repeated k times with `masked`
    (B, kL) positions [MASK]ed (SUBS); with `clean_rows` also (B, L − 1) −log p_θ(x_{i+1} | x_≤i), the
    clean copy read as a next-token model (a clean_causal model's), else None. `clean`: the clean
    copy's inputs when they differ from x (training's `clean_input_mask`); the targets stay x. Unmasked
    noisy positions, which every caller multiplies by 0, may come back as 0: the output head then skips
    their rows (dlm.objectives.scored_rows)."""
    kL = masked.shape[1]
    target = x.repeat(1, kL // x.shape[1])
    z = torch.where(masked, torch.full_like(target, mask_id), target)
    if takes_rows(model):
        scored = _scored_rows_nll(model, x, z, target, masked, mask_id, block, clean_rows, clean)
        if scored is not None:
            return scored
    logits = block_diffusion_logits(model, z, x if clean is None else clean, block, clean_rows=clean_rows).float()
    noisy = logits[:, :kL]
    noisy[..., mask_id] = float("-inf")
    nll = token_cross_entropy(noisy, target)
    if not clean_rows:
        return nll, None
    return nll, token_cross_entropy(logits[:, kL:-1], x[:, 1:])


def _scored_rows_nll(model: nn.Module, x: torch.Tensor, z: torch.Tensor, target: torch.Tensor,
                     masked: torch.Tensor, mask_id: int, block: int, clean_rows: bool,
                     clean: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """_token_nll through the head on the masked noisy rows (and the clean rows 0 … L − 2 with `clean_rows`)
    only; None when fewer than two rows are masked (then every row is computed)."""
    B, L = x.shape
    kL = masked.shape[1]
    width = kL + L if clean_rows else kL  # rows of the model's output per sequence
    noisy = flat_rows(masked)  # into (B, kL)
    index = noisy + (noisy // kL) * (width - kL)  # the same rows, into (B, width)
    if clean_rows:
        next_rows = (torch.arange(B, device=x.device)[:, None] * width + kL
                     + torch.arange(L - 1, device=x.device)).flatten()
        index = torch.cat((index, next_rows))
    rows = as_rows_argument(index)
    if rows is None:
        return None
    logits = block_diffusion_logits(model, z, x if clean is None else clean, block, clean_rows=clean_rows,
                                    rows=rows).float()  # (N, V): the masked noisy rows, then the clean ones
    n = noisy.numel()
    logits[:n, mask_id] = float("-inf")
    nll = rows_nll(logits[:n], target, noisy)
    if not clean_rows:
        return nll, None
    return nll, token_cross_entropy(logits[n:], x[:, 1:].flatten()).view(B, L - 1)


def _hidden_clean(model: nn.Module, x: torch.Tensor, mask_id: int, share: float,
                  generator: torch.Generator | None) -> torch.Tensor | None:
    """The clean copy's inputs with `share` of them [MASK]ed (training's clean_input_mask), or None."""
    if not (share > 0 and model.training):
        return None
    # drawn on the CPU from the caller's generator, like the noise
    hide = (torch.rand(x.shape, generator=generator, device="cpu") < share).to(x.device)
    return x.masked_fill(hide, mask_id)


def bd3_loss(model: nn.Module, x: torch.Tensor, schedule: Schedule, mask_id: int, block: int,
             n_real_tokens: int | None = None, generator: torch.Generator | None = None,
             t: torch.Tensor | None = None, *, antithetic: bool = True, weighting: str = "elbo",
             weight_cap: float | None = None, t_range: tuple[float, float] = (0.0, 1.0),
             prompt_mask: torch.Tensor | None = None, token_weight: torch.Tensor | None = None,
             copies: int = 1, clean_ar_weight: float = 0.0, clean_input_mask: float = 0.0,
             count_masking: bool = False) -> LossOutput:
    """One-sample estimate of the block-diffusion NELBO of each sequence in x (B, L), per token.

    `t` (B, L/B) fixes the blocks' noise levels (default: drawn). `prompt_mask` (B, L) bool marks
    positions never masked or scored (chat fine-tuning's conversation so far) and `token_weight`
    (B, L) each scored position's weight, as in `mdlm_loss`. With weighting other than 'elbo' or a
    narrower t_range the result is a training loss, not the NELBO. `copies` > 1 (training): that many
    noisy copies of each window share its clean copy, and the loss is their mean (t then (B, k·L/B)).
    `clean_ar_weight` > 0 (training, a clean_causal model): adds that weight × the clean copy's
    next-token NLL per token, an auxiliary loss (the result is then not the NELBO).
    `clean_input_mask` > 0 (training only, a regulariser like the AR twin's input mask): that share of
    the clean copy's inputs is replaced by [MASK], so later blocks and the next-token rows read a
    partly hidden past; the noisy copies and every target stay the text.
    `count_masking` (diffusion.block_noise=count): each block masks k tokens, k uniform on 1 … B (stratified
    over the blocks when `antithetic`), a random set of them, each scored with weight B / k. The exact bound
    of a block is Σ_k E[mean NLL of the masked tokens of a random k-pattern] (the pattern weights of
    dlm.eval.likelihood summed per k), so this is an unbiased estimate of it whatever the schedule; `t`,
    `t_range`, `weighting` and `weight_cap` are then unused.
    """
    if clean_ar_weight and not reads_clean_causally(model):
        raise ValueError("clean_ar_weight needs a model whose clean copy is token-causal (model.clean_causal=true); "
                         "block-causal clean tokens see the next token")
    B, L = x.shape
    check_block_size(L, block)
    n_blocks = L // block
    if prompt_mask is not None:
        prompt_mask = prompt_mask.repeat(1, copies)
    if token_weight is not None:
        token_weight = token_weight.repeat(1, copies)
    if count_masking:
        masked, weight, level = _count_masks(B, copies * n_blocks, block, x.device, generator, antithetic)
    else:
        if t is None:
            t = sample_block_t(B, copies * n_blocks, x.device, generator, antithetic, t_range)
        t = t.clamp(min=T_MIN)
        t_token = t.repeat_interleave(block, dim=1)  # (B, kL)
        mask_prob = (1 - schedule.alpha(t_token.double())).float()  # (B, kL), as mask_tokens computes it
        masked = torch.rand(t_token.shape, generator=generator, device="cpu").to(x.device) < mask_prob
        weight = loss_weight(schedule, t_token.flatten(), weighting, weight_cap).view(t_token.shape)
        level = t.mean(1)
    shape = masked.shape
    if prompt_mask is not None:
        masked &= ~prompt_mask
    clean = _hidden_clean(model, x, mask_id, clean_input_mask, generator)
    nll, next_nll = _token_nll(model, x, masked, mask_id, block, clean_rows=clean_ar_weight > 0, clean=clean)
    scored = masked if token_weight is None else masked * token_weight
    per_seq = (nll * scored * weight).sum(1) / (copies * L)
    if next_nll is not None:
        if token_weight is not None:
            next_nll = next_nll * token_weight[:, 1:L]
        per_seq = per_seq + clean_ar_weight * next_nll.sum(1) / L

    if weighting == "elbo" and not count_masking:  # count masking's weights already sum the exact bound
        alpha_0, alpha_1 = schedule.alpha(torch.tensor([0.0, 1.0], dtype=torch.float64)).tolist()
        if alpha_0 < 1 - 1e-9:  # reconstruction term at t = 0, every block at once
            mask0 = torch.rand(shape, generator=generator, device="cpu").to(x.device) < (1 - alpha_0)
            if prompt_mask is not None:
                mask0 &= ~prompt_mask
            nll0, _ = _token_nll(model, x, mask0, mask_id, block)
            per_seq = per_seq + (nll0 * mask0).sum(1) / (copies * L)
        if alpha_1 > 1e-9:  # prior term at t = 1 (analytic), per generated token
            assert n_real_tokens is not None, f"schedule {schedule.name} leaves α(1) > 0: pass n_real_tokens"
            prior = alpha_1 * math.log(n_real_tokens)
            if prompt_mask is not None:
                prior = prior * (~prompt_mask).sum(1) / (copies * L)
            per_seq = per_seq + prior
    return LossOutput(per_seq.sum() * L, B * L, per_seq.detach(), level)



def _count_masks(batch: int, n_blocks: int, block: int, device: torch.device, generator: torch.Generator | None,
                 antithetic: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """count_masking's draw: (masked (batch, n_blocks·block), per-token weight B / k, mean k / B per row),
    k of each block's tokens masked, k uniform on 1 … B (stratified like the noise levels), a random set."""
    u = sample_block_t(batch, n_blocks, device, generator, antithetic)
    k = (u * block).long().clamp(max=block - 1) + 1  # (batch, n_blocks)
    ranks = torch.rand(batch, n_blocks, block, generator=generator, device="cpu").argsort(-1).argsort(-1).to(device)
    masked = (ranks < k[..., None]).view(batch, n_blocks * block)
    weight = (block / k.double()).float().repeat_interleave(block, dim=1)
    return masked, weight, (k.float() / block).mean(1)
