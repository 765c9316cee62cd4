"""Likelihood on a split: the diffusion NELBO (a bound) or the AR twin's exact NLL, in nats/token.

Diffusion. Every diffusion model is scored with the same estimator, under the linear schedule
(the continuous-time bound does not depend on the training schedule, MDLM §3.3). One *pass*
scores every window of the split once, with noise levels stratified over the pass
(t_i = (u + π(i)/N) mod 1 for a random permutation π): an unbiased estimate of the split's
NELBO per token. Passes use independent u, π and masks, so the spread of pass estimates gives
the Monte-Carlo standard error; passes continue until it is below `target_se` (or `max_passes`).

Block diffusion (bd3 runs): the same estimator over the block NELBO of dlm.objectives.block_diffusion,
one noise level per block, stratified over every block of the pass. For small blocks (B ≤
EXACT_MAX_BLOCK by default) the bound is computed exactly instead (`exact_block_nelbo`): every one of
a block's 2^B − 1 mask patterns is scored with its weight under the linear schedule, so the figure
has no Monte-Carlo error at all, for 2^B − 1 forward passes over the split (15 for blocks of 4).

AR twin. The NLL is exact (no Monte-Carlo error); each window is scored from a [BOS], the same
tokens the diffusion bound covers.

Both also report the standard error over windows (how much the figure would move with other
text of the same kind), which is a different quantity from the estimator's Monte-Carlo error.

Left to right (`evaluate_left_to_right`). A diffusion model is also a left-to-right model: reveal
the window one token at a time, each predicted with everything before it visible and everything
after it masked. The product of those probabilities is an exact likelihood (of the model used as a
left-to-right sampler), usually tighter than the NELBO, which averages over all orders; it costs
one forward pass per position. A block model's counterpart (`block_left_to_right_nll`) reads each
block left to right and costs B mask patterns.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from dlm.diffusion.schedules import Linear
from dlm.objectives.autoregressive import ar_loss
from dlm.objectives.block_diffusion import bd3_loss
from dlm.objectives.cross_entropy import token_cross_entropy
from dlm.objectives.mdlm import mdlm_loss
from dlm.progress import Progress
from dlm.runtime import autocast
from dlm.special_ids import SpecialIds


def _stratified_t(n: int, generator: torch.Generator) -> torch.Tensor:
    u = torch.rand(1, generator=generator)
    return ((u + torch.randperm(n, generator=generator).float() / n) % 1.0)


EXACT_MAX_BLOCK = 4  # auto: exact up to blocks of 4 (15 passes, against the estimator's 4 or more)
EXACT_LIMIT_BLOCK = 10  # 1,023 passes: beyond that the exact sum is refused


def mask_pattern_weight(masked: int, block: int) -> float:
    """The weight of one mask pattern with `masked` of a block's `block` tokens masked, in the block's
    NELBO under the linear schedule: ∫₀¹ (1/t) · t^k (1 − t)^(B−k) dt = (k − 1)! (B − k)! / B!
    (the pattern's probability at noise level t times the ELBO weight 1/t, integrated over t)."""
    return math.factorial(masked - 1) * math.factorial(block - masked) / math.factorial(block)


def mask_patterns(block: int) -> list[list[bool]]:
    """The 2^B − 1 non-empty mask patterns of a block, pattern p masking position i when bit i of p + 1 is set."""
    return [[bool(bits >> i & 1) for i in range(block)] for bits in range(1, 2 ** block)]


@torch.no_grad()
def block_pattern_nll(model: torch.nn.Module, windows: torch.Tensor, special: SpecialIds, *, block: int,
                      device: torch.device, dtype: torch.dtype, batch_size: int = 64,
                      progress: bool = True, patterns: list[list[bool]] | None = None,
                      desc: str = "exact NELBO") -> np.ndarray:
    """(N, 2^B − 1, B) float64 (or (N, len(patterns), B) for the `patterns` given): for each window,
    mask pattern (`mask_patterns`) and position inside a block, −log p_θ(x_i | x_<b clean, x_b with the
    pattern masked) summed over the window's blocks (0 where the pattern leaves i visible).

    A noisy block reads only itself and the clean blocks before it, so a noisy copy with the same
    pattern in every block scores all blocks at once. One forward pass reads up to `batch_size`
    patterns' copies beside the one clean copy they share (dlm.objectives.block_diffusion's `copies`),
    for batch_size ÷ patterns windows at a time."""
    from dlm.model.block_attention import check_block_size
    from dlm.objectives.block_diffusion import block_diffusion_logits
    from dlm.objectives.scored_rows import as_rows_argument, flat_rows, rows_nll, takes_rows

    model.eval()
    head_on_masked_rows = takes_rows(model)
    N, L = windows.shape
    check_block_size(L, block)
    patterns = mask_patterns(block) if patterns is None else patterns
    P = len(patterns)
    chunk = min(P, batch_size)  # patterns per forward pass
    step = max(1, batch_size // chunk)  # windows per forward pass
    masks = [torch.tensor(patterns[first:first + chunk], device=device).repeat(1, L // block)  # (c, L) each
             for first in range(0, P, chunk)]
    table = np.zeros((N, P, block))
    bar = Progress(total=N * P, enabled=progress, desc=desc, unit="pattern", leave=False)
    for i in range(0, N, step):
        x = windows[i:i + step].to(device)  # (b, L)
        b = len(x)
        for first, masked in zip(range(0, P, chunk), masks, strict=True):
            c = len(masked)
            z = x[:, None].masked_fill(masked[None], special.mask)  # (b, c, L)
            target = x.repeat(1, c)  # (b, c·L)
            rows = None
            if head_on_masked_rows:  # the head on the masked rows only
                index = flat_rows(masked[None].expand(b, c, L).reshape(b, c * L))
                rows = as_rows_argument(index)
            with autocast(device, dtype):
                logits = block_diffusion_logits(model, z.reshape(b, c * L), x, block, rows=rows).float()
            logits[..., special.mask] = float("-inf")
            if rows is None:  # (b, c·L, V)
                nll = token_cross_entropy(logits, target).view(b, c, L)
            else:  # (N, V)
                nll = rows_nll(logits, target, index).view(b, c, L)
            sums = (nll * masked).view(b, c, L // block, block).sum(2)  # (b, c, B)
            table[i:i + b, first:first + c] = sums.double().cpu().numpy()
            bar.update(b * c)
    bar.close()
    return table


def exact_block_nelbo(model: torch.nn.Module, windows: torch.Tensor, special: SpecialIds, *, block: int,
                      device: torch.device, dtype: torch.dtype, batch_size: int = 64,
                      progress: bool = True) -> np.ndarray:
    """The block-diffusion NELBO of each window (N, L), per token, summed exactly over mask patterns:
    a block's bound is Σ_m w(|m|) Σ_{i∈m} −log p_θ(x_i | x_<b, x_b with m masked) over the 2^B − 1
    non-empty patterns m (`mask_pattern_weight`), 2^B − 1 forward passes over the windows. (N,) float64."""
    table = block_pattern_nll(model, windows, special, block=block, device=device, dtype=dtype,
                              batch_size=batch_size, progress=progress)
    return nelbo_from_table(table, block, windows.shape[1])


def nelbo_from_table(table: np.ndarray, block: int, length: int) -> np.ndarray:
    """(N,) per token: the exact block NELBO from `block_pattern_nll`'s table of every pattern."""
    weights = np.array([mask_pattern_weight(sum(m), block) for m in mask_patterns(block)])
    return (table.sum(2) * weights).sum(1) / length


def standard_error(values: np.ndarray) -> float | None:
    """The standard error of the mean of `values` (over windows, passes…); None for a single value."""
    return float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None


def order_nll(table: np.ndarray, order: tuple[int, ...], length: int) -> np.ndarray:
    """(N,) per token: the NLL of each window when every block is revealed in `order` (positions inside
    a block, first revealed first), read from `block_pattern_nll`'s table. Averaged over all B! orders
    this is the exact block NELBO (the masked-diffusion bound is an any-order autoregressive loss); the
    left-to-right order alone is an exact likelihood of the same network."""
    total, hidden = np.zeros(table.shape[0]), set(order)
    for position in order:
        index = sum(1 << i for i in hidden) - 1  # the pattern masking what is still hidden
        total += table[:, index, position]
        hidden.remove(position)
    return total / length


def block_left_to_right_nll(model: torch.nn.Module, windows: torch.Tensor, special: SpecialIds, *, block: int,
                            device: torch.device, dtype: torch.dtype, batch_size: int = 64,
                            progress: bool = True) -> dict:
    """Exact NLL of `windows` (N, L) under a block model decoding each block left to right, one token
    a step: token i of a block predicted from the clean blocks before it, the block's tokens before i
    visible and the rest masked. The left-to-right order of `order_nll`, from B patterns only (B
    copies in one forward pass). An exact likelihood of the network used that way, not the bound."""
    started = time.perf_counter()
    N, L = windows.shape
    patterns = [[j >= i for j in range(block)] for i in range(block)]  # pattern i masks positions i … B−1
    table = block_pattern_nll(model, windows, special, block=block, device=device, dtype=dtype,
                              batch_size=batch_size, progress=progress, patterns=patterns, desc="left-to-right NLL")
    per_token = table[:, range(block), range(block)].sum(1) / L
    nats = float(per_token.mean())
    return {"kind": "block_left_to_right_nll", "nats_per_token": nats, "bits_per_token": nats / math.log(2),
            "perplexity": math.exp(nats),
            "window_standard_error": standard_error(per_token),
            "windows": N, "window_length": L, "block_size": block, "tokens": N * L,
            "seconds": time.perf_counter() - started}


def use_exact(block: int, estimator: str) -> bool:
    """Whether the block NELBO is summed exactly: `estimator` 'exact', or 'auto' with small blocks."""
    if estimator not in ("auto", "exact", "mc"):
        raise ValueError(f"estimator={estimator!r} is not one of auto, exact, mc")
    if estimator == "exact" and not 0 < block <= EXACT_LIMIT_BLOCK:
        what = f"blocks of {block}" if block else "an MDLM model (one block the size of the context)"
        raise ValueError(f"the exact NELBO needs 2^B − 1 passes, too many for {what} (at most blocks of "
                         f"{EXACT_LIMIT_BLOCK}); use --estimator mc")
    return block > 0 and (estimator == "exact" or (estimator == "auto" and block <= EXACT_MAX_BLOCK))


def passes_needed(passes: int, mc_se: float, target_se: float, min_passes: int, max_passes: int) -> int:
    """How many passes the NELBO estimate will take in all, judged after `passes` of them with
    Monte-Carlo s.e. `mc_se`: s.e. ∝ 1/√passes, so reaching `target_se` takes about
    passes·(mc_se/target_se)², at least `min_passes` and one more than now, at most `max_passes`.
    This is the progress bar's total (the cap alone made a 4-pass job's ETA read two hours)."""
    if mc_se < target_se:
        needed = passes  # the loop stops here once min_passes are done
    elif target_se > 0 and math.isfinite(mc_se):
        needed = max(math.ceil(passes * (mc_se / target_se) ** 2), passes + 1)
    else:
        needed = max_passes
    return min(max(needed, min_passes), max(max_passes, passes))


@torch.no_grad()
def evaluate_likelihood(model: torch.nn.Module, windows: torch.Tensor, special: SpecialIds, *, causal: bool,
                        device: torch.device, dtype: torch.dtype, batch_size: int = 64, seed: int = 0,
                        target_se: float = 0.01, min_passes: int = 4, max_passes: int = 200,
                        progress: bool = True, block: int = 0, estimator: str = "auto") -> dict:
    """Score `windows` (N, L) of token ids: the NELBO (diffusion; block diffusion with blocks of
    `block` tokens when > 0) or the exact NLL (`causal`). Returns a dict of figures in nats/token
    (see module docstring). `estimator`: 'mc' (Monte Carlo), 'exact' (block diffusion: every mask
    pattern) or 'auto' (exact for blocks of up to EXACT_MAX_BLOCK tokens)."""
    exact = not causal and use_exact(block, estimator)
    model.eval()
    N, L = windows.shape
    n_blocks = L // block if block else 1
    generator, started = torch.Generator().manual_seed(seed), time.perf_counter()

    def one_pass(t_all: torch.Tensor | None) -> np.ndarray:
        per_window = []
        for i in range(0, N, batch_size):
            x = windows[i:i + batch_size].to(device)
            with autocast(device, dtype):
                if causal:
                    out = ar_loss(model, x, special.bos)
                elif block:
                    out = bd3_loss(model, x, Linear(), special.mask, block, generator=generator,
                                   t=t_all[i:i + batch_size].to(device))
                else:  # linear: α(1) = 0, so the bound has no prior term (no vocabulary size needed)
                    out = mdlm_loss(model, x, Linear(), special.mask, generator=generator,
                                    t=t_all[i:i + batch_size].to(device))
            per_window.append(out.per_sequence.double().cpu().numpy())
        return np.concatenate(per_window)

    if causal:
        per_window = one_pass(None)
        passes = [per_window.mean()]
        mc_se = 0.0
    elif exact:
        per_window = exact_block_nelbo(model, windows, special, block=block, device=device, dtype=dtype,
                                       batch_size=batch_size, progress=progress)
        passes = [per_window.mean()] * (2 ** block - 1)  # one forward pass over the split per mask pattern
        mc_se = 0.0
    else:
        passes, window_sums = [], np.zeros(N)
        bar = Progress(total=min(min_passes, max_passes), enabled=progress, desc="eval passes", unit="pass",
                       leave=False)
        while True:
            t_all = _stratified_t(N * n_blocks, generator).view(N, n_blocks)  # a level per block
            estimate = one_pass(t_all if block else t_all[:, 0])  # MDLM: one per window
            window_sums += estimate
            passes.append(estimate.mean())
            if len(passes) >= 2:  # an s.e. needs two passes; the total is then re-estimated from it
                mc_se = float(np.std(passes, ddof=1) / math.sqrt(len(passes)))
                bar.set_postfix(nelbo=f"{np.mean(passes):.4f}", se=f"{mc_se:.4f}")
                bar.total = passes_needed(len(passes), mc_se, target_se, min_passes, max_passes)
            bar.update(1)
            if len(passes) >= 2 and ((len(passes) >= min_passes and mc_se < target_se)
                                     or len(passes) >= max_passes):
                break
        bar.close()
        per_window = window_sums / len(passes)
    nats = float(np.mean(passes))
    return {
        "kind": "exact_nll" if causal else "nelbo_bound",
        "nats_per_token": nats,
        "bits_per_token": nats / math.log(2),
        "perplexity": math.exp(nats) if causal else None,
        "perplexity_bound": None if causal else math.exp(nats),
        "mc_standard_error": mc_se,
        "window_standard_error": standard_error(per_window),
        "passes": len(passes),
        "windows": N,
        "window_length": L,
        "tokens": N * L,
        "seed": seed,
        "estimator_schedule": None if causal else "linear",
        "estimator": "exact" if causal else "exact_mask_patterns" if exact else "monte_carlo",
        "block_size": block or None,
        "seconds": time.perf_counter() - started,
    }


@torch.no_grad()
def loss_by_noise_level(model: torch.nn.Module, windows: torch.Tensor, special: SpecialIds, *, device: torch.device,
                        dtype: torch.dtype, levels: int = 20, batch_size: int = 64, seed: int = 0) -> list[dict]:
    """The loss-vs-t curve, for diagnosing schedules: at each noise level t on a midpoint grid,
    the mean −log p(x_l | z_t) over the masked tokens of every window (linear masking, α = 1 − t).

    The NELBO under the linear schedule is the integral of this curve over t ∈ [0, 1].
    """
    from dlm.diffusion.process import mask_tokens
    from dlm.objectives.mdlm import masked_nll

    model.eval()
    generator = torch.Generator().manual_seed(seed)
    schedule, curve = Linear(), []
    for k in range(levels):
        t_value = (k + 0.5) / levels
        total, count = 0.0, 0
        for i in range(0, len(windows), batch_size):
            x = windows[i:i + batch_size].to(device)
            t = torch.full((len(x),), t_value, device=device)
            z, masked = mask_tokens(x, t, schedule, special.mask, generator)
            with autocast(device, dtype):
                total += float(masked_nll(model, x, z, masked, t, special.mask).sum())
            count += int(masked.sum())
        curve.append({"t": t_value, "nll_per_masked_token": total / max(count, 1), "masked_tokens": count})
    return curve


@torch.no_grad()
def evaluate_left_to_right(model: torch.nn.Module, windows: torch.Tensor, special: SpecialIds, *,
                           device: torch.device, dtype: torch.dtype, batch_size: int = 64,
                           time_conditioned: bool = False, max_logits: int = 2**25,
                           progress: bool = True) -> dict:
    """Exact NLL of `windows` (N, L) under a diffusion model decoding left to right: token i is
    scored from x_<i visible and x_≥i masked. One forward pass per position (batched)."""
    model.eval()
    N, L = windows.shape
    vocab = None
    started, passes, per_window = time.perf_counter(), 0, np.zeros(N)
    columns = torch.arange(L)
    bar = Progress(total=N * L, enabled=progress, desc="left-to-right", leave=False, unit="pos")
    for w in range(0, N, batch_size):
        x = windows[w:w + batch_size].to(device)  # (b, L)
        b = len(x)
        chunk = max(1, max_logits // max(b * L * (vocab or 1024), 1))  # positions per forward
        for first in range(0, L, chunk):
            positions = torch.arange(first, min(first + chunk, L))  # (P,)
            P = len(positions)
            hidden = columns[None, :] >= positions[:, None]  # (P, L): what is masked when scoring i
            inputs = x[:, None, :].expand(b, P, L).masked_fill(hidden.to(device)[None], special.mask)
            t = ((L - positions).float() / L).repeat(b).to(device) if time_conditioned else None
            with autocast(device, dtype):
                logits = model(inputs.reshape(b * P, L), t=t)  # (b·P, L, V)
            vocab = logits.shape[-1]
            rows = torch.arange(b * P, device=device)
            at = logits[rows, positions.repeat(b).to(device)].float()  # (b·P, V): each row's scored column
            at[:, special.mask] = float("-inf")
            target = x[:, positions.to(device)].reshape(-1)  # (b·P,)
            nll = -at.log_softmax(-1).gather(-1, target[:, None]).squeeze(-1)
            per_window[w:w + b] += nll.view(b, P).double().sum(1).cpu().numpy()
            passes += 1
            bar.update(b * P)
    bar.close()
    per_token = per_window / L
    nats = float(per_token.mean())
    return {"kind": "left_to_right_nll", "nats_per_token": nats, "bits_per_token": nats / math.log(2),
            "perplexity": math.exp(nats),
            "window_standard_error": standard_error(per_token),
            "windows": N, "window_length": L, "tokens": N * L, "forward_passes": passes,
            "sequences_scored": N * L, "seconds": time.perf_counter() - started}


def clean_copy_nll(model: torch.nn.Module, windows: torch.Tensor, special: SpecialIds, *, device: torch.device,
                   dtype: torch.dtype, batch_size: int = 64) -> dict:
    """Exact NLL of a block model's clean copy read as a next-token model (model.clean_causal): each
    window's tokens 2 … L given the ones before, with [MASK], [PAD] and [BOS] excluded as the sampler
    excludes them. This is the distribution self-speculative decoding samples from; it is not the block
    model's NELBO (the first token of a window has nothing to be predicted from and is not scored)."""
    model.eval()
    N, L = windows.shape
    started, per_window = time.perf_counter(), []
    causal = torch.ones(L, L, dtype=torch.bool, device=device).tril()
    with torch.no_grad():
        for i in range(0, N, batch_size):
            x = windows[i:i + batch_size].to(device)
            with autocast(device, dtype):
                logits = model(x, attn_mask=causal)[:, :-1].float()
            logits[..., [special.mask, special.pad, special.bos]] = float("-inf")
            nll = token_cross_entropy(logits, x[:, 1:])
            per_window.append(nll.double().mean(1).cpu().numpy())
    scores = np.concatenate(per_window)
    mean = float(scores.mean())
    return {"kind": "clean_copy_nll", "nats_per_token": mean, "bits_per_token": mean / math.log(2),
            "window_standard_error": standard_error(scores),
            "windows": N, "tokens_scored": N * (L - 1), "seconds": time.perf_counter() - started}
