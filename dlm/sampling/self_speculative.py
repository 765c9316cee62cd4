"""Self-speculative block decoding: a block model drafts with its noisy block and checks with its clean copy.

A block-diffusion model trained with `model.clean_causal` and `diffusion.clean_ar_weight > 0` reads text
in two ways: its clean copy is a next-token (causal) model, and its noisy block fills B masked positions
in parallel from the clean text before them. One forward pass does both jobs (TiDAR, Liu et al. 2025):

* clean rows verify. The last committed token and the k ≤ K drafted tokens after it (K = `drafts`, 1 by
  default, at most B − 1), read causally, give the next-token distribution p at each of k + 1 positions.
  Draft i is accepted with probability min(1, p(dᵢ)/q(dᵢ)) (speculative sampling, Leviathan et al. 2023).
  At the first rejection a token is drawn from the residual max(0, p − q); after k acceptances it is
  drawn from p itself.
* noisy rows draft. For every possible number a of accepted drafts there is a group of K + 1 masks right
  after them (positions n+a … n+a+K), reading the clean text up to the accepted ones. The group of the
  outcome that happened supplies the next K drafts: the positions after the token just drawn, which
  the group saw as a mask. With K = B − 1 a group is a whole block; with fewer drafts it is the start of
  one, and a pass carries (K + 1)(K + 2) rows instead of B(B + 1).

So the committed text follows the clean copy's next-token distribution exactly (after temperature, top-k
and top-p), whatever the drafts are. The drafts only decide how many tokens a forward pass commits: 1 to
K + 1. Drafted blocks start wherever the text has got to, not at multiples of B. The model cannot tell the
difference: its positions are relative (RoPE), its clean copy is token-causal, and it was trained on
windows cut at random offsets.

Rows of a batch advance at their own pace. Each row's keys go to its own columns of a cache. Only the
clean rows are stored, and a forward pass reads the stored prefix plus its own rows. A row that has
finished rides along until the last row ends (its rows are masked). Prompts are left-padded as on a
diffusion canvas, so the result is laid out like every other sampler's. A single row's passes away from
the canvas's end take a leaner path to the same result (`_step_single_row`).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from dlm.errors import DlmError
from dlm.sampling.base import filter_logits, row_generators, row_uniforms
from dlm.sampling.canvas import Canvas
from dlm.sampling.config import SamplerConfig
from dlm.sampling.denoiser import DenoiseStep, GenerationResult
from dlm.special_ids import SpecialIds

DEFAULT_DRAFTS = 1
"""Drafts per pass when `SamplerConfig.drafts` is 0. A pass of K drafts carries (K + 1)(K + 2) rows (6 for
one draft, 12 for 2, 20 for 3) and commits up to K + 1 tokens. On a CPU one draft was the fastest at batch 32
(1.14× the AR twin, against 0.72× for 2 and 0.54× for 3) and within 4 % of the fastest at batch 1
(docs/block-diffusion.md, 2026-12-06). Not the batch's to choose: a row's text depends on K, and it must
not depend on the batch."""


def check_drafts(drafts: int, block: int) -> None:
    """A block of B drafts at most B − 1 tokens a pass (0: the default)."""
    if drafts > block - 1:
        raise DlmError(f"drafts={drafts}: a block of {block} drafts at most {block - 1} tokens a pass")


class RowCache:
    """Keys and values of each row at its own columns, written in place.

    The Transformer calls `span`, `update` and `advance` as it does for `KVCache`. Before a pass, `place`
    says where each row's pass begins: the R rows of row b (clean rows first, then the noisy groups) go to
    columns start_b … start_b+R−1, and every layer reads the cache up to max(start) + R, with a mask that
    shows row b its stored prefix [0, start_b) and its own pass. The clean rows belong at exactly those
    columns. What lands after them (noisy rows, clean rows past the accepted drafts, a finished row's
    pass) lies beyond anything a later pass reads before overwriting it. `scratch` columns past the canvas
    make room for a pass's rows there. (Concatenating the stored prefix with each pass's rows, as a first
    version did, copied the whole cache in every layer of every pass.)
    """

    def __init__(self, n_layer: int, batch: int, n_head: int, columns: int, head_dim: int,
                 device: torch.device, dtype: torch.dtype, scratch: int):
        shape = (n_layer, batch, n_head, columns + scratch, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0  # read by the causal twin's guard only; this cache serves bidirectional models
        self.start = 0  # where every row's pass begins, when they begin at one column
        self.index: torch.Tensor | None = None  # else each row's columns, as a scatter index (B, H, R, D)
        self.end = 0

    def place(self, start: torch.Tensor | int, rows: int, last: int | None = None) -> None:
        """The next pass's rows go to columns start … start+rows−1 of each row: one int for every row, or
        `start` (B,) with `last` its largest value."""
        if isinstance(start, int):
            self.start, self.index, self.end = start, None, start + rows
            return
        B, H, _, D = self.k.shape[1:]
        offsets = torch.arange(rows, device=start.device)
        self.index = (start[:, None] + offsets)[:, None, :, None].expand(B, H, rows, D)
        self.end = last + rows

    def span(self, n_tokens: int) -> tuple[int, int]:
        return 0, 0  # positions are always given explicitly; the range check reads them

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = k.to(self.k.dtype), v.to(self.v.dtype)
        if self.index is None:
            self.k[layer, :, :, self.start:self.end] = k
            self.v[layer, :, :, self.start:self.end] = v
        else:
            self.k[layer].scatter_(2, self.index, k)
            self.v[layer].scatter_(2, self.index, v)
        return self.k[layer, :, :, :self.end], self.v[layer, :, :, :self.end]

    def advance(self, n_tokens: int) -> None:
        pass


class SelfSpeculativeDecoder:
    """Continue each row of a canvas (prompt columns fixed, the rest [MASK]) left to right."""

    def __init__(self, model: torch.nn.Module, canvas: Canvas, config: SamplerConfig, special: SpecialIds,
                 block: int, seeds: list[int] | None = None):
        self.model, self.cfg, self.special, self.block = model, config, special, block
        check_drafts(config.drafts, block)
        # K drafts checked per pass; each drafting group is K + 1 masks (the token drawn in the pass, then
        # the next K drafts), fewer than the block's B when K < B − 1.
        self.K = min(config.drafts or DEFAULT_DRAFTS, block - 1)
        self.S = self.K + 1
        self.canvas = canvas
        # The canvas and spare columns past its end: a pass writes its drafts (and resets them) at n … n+K
        # unconditionally, and what lies past the canvas lands in the spare columns, which nothing reads.
        B, W = canvas.tokens.shape
        spare = torch.full((B, self.K + self.S), special.mask, dtype=canvas.tokens.dtype, device=canvas.tokens.device)
        self._padded = torch.cat((canvas.tokens, spare), 1)
        self.x = self._padded[:, :W]  # a view: the canvas proper
        self.device = self.x.device
        gen = ~canvas.fixed & canvas.valid
        if not bool(gen.any()):
            raise DlmError("nothing to generate: the canvas has no [MASK]")
        start = int(gen.any(0).nonzero()[0])
        if bool((~gen[:, start:]).any()) or bool(gen[:, :start].any()):
            raise DlmError("speculative decoding continues a prompt: the masks must all follow it "
                           "(fill templates with a diffusion sampler)")
        self.start, self.width = start, W
        self.generators = row_generators(config.seed, B, self.device, seeds)
        self.n = torch.full((B,), start, dtype=torch.long, device=self.device)  # next column to commit
        self.done = torch.zeros(B, dtype=torch.bool, device=self.device)
        self.drafts = torch.zeros(B, self.K, dtype=torch.long, device=self.device)
        self.n_drafts = torch.zeros(B, dtype=torch.long, device=self.device)
        self.q: torch.Tensor | None = None  # (B, K, V) the distributions the drafts were drawn from
        self.forward_passes = 0
        self.step_count = 0
        cfg = model.cfg
        # One row, every column valid: most passes take `_step_single_row`.
        self._one_row = B == 1 and bool(canvas.valid.all())
        rows = max((self.K + 1) * (1 + self.S), self.S)  # a pass's rows (a prompt's start at column 0 fits)
        self.cache = RowCache(cfg.n_layer, B, cfg.n_head, W, cfg.d_model // cfg.n_head,
                              self.device, next(model.parameters()).dtype, scratch=rows)
        self._suppress = torch.tensor([special.mask, special.pad, special.bos], device=self.device)
        self._structures: dict[tuple, torch.Tensor] = {}
        # Constants of every pass, made once: a pass is a few rows, and on a CPU each small tensor op costs
        # microseconds (bench/decode_breakdown.py splits a pass's time between the network and this code).
        self._span = torch.arange(self.K + 1, device=self.device)  # offsets 0 … K of a pass's columns
        self._group_span = torch.arange(self.S, device=self.device)
        self._group_offsets = self._span[:, None] + self._group_span  # (K + 1, S): group a covers a … a+S−1
        self._columns = torch.arange(W + rows, device=self.device)
        self._valid = torch.cat((canvas.valid, torch.zeros(B, rows, dtype=torch.bool, device=self.device)), 1)
        self._left_pad = (~canvas.valid).sum(1, keepdim=True)  # each row counts positions from its first token
        if self._one_row:
            self._single_row_constants()

    # --- distributions and draws ---------------------------------------------------------------

    def _probs(self, logits: torch.Tensor) -> torch.Tensor:
        """The distribution tokens are drawn from: specials suppressed, then temperature, top-k, top-p.
        Temperature 0 gives a one-hot distribution at the argmax (greedy)."""
        logits = logits.double().index_fill_(-1, self._suppress, float("-inf"))
        if self.cfg.eos_penalty:
            logits[..., self.special.eos] -= self.cfg.eos_penalty
        logits = filter_logits(logits, self.cfg.top_k, self.cfg.top_p)
        if self.cfg.temperature <= 0:
            return torch.zeros_like(logits).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
        if self.cfg.temperature != 1.0:  # (dividing by 1 changes nothing: skipped)
            logits = logits / self.cfg.temperature
        return logits.softmax(-1)

    def _uniform(self, width: int) -> torch.Tensor:
        return row_uniforms(self.generators, width, self.device)

    @staticmethod
    def _draw(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Inverse-CDF draws: probs (..., V), u (...) uniforms → ids (...)."""
        cdf = probs.cumsum(-1)
        ids = torch.searchsorted(cdf, (u * cdf[..., -1]).unsqueeze(-1).contiguous()).squeeze(-1)
        return ids.clamp(max=probs.shape[-1] - 1)

    # --- one forward pass ----------------------------------------------------------------------

    def _forward(self, clean_cols: torch.Tensor, clean_ok: torch.Tensor, group_cols: torch.Tensor,
                 group_ok: torch.Tensor, structure: torch.Tensor,
                 cached: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Clean rows at columns `clean_cols` (B, C), causal among themselves; noisy groups of masks at
        `group_cols` (B, G, S); `structure` (1, R, R), which new row reads which (`_structure`); all reading
        the stored columns below `cached` (B,). Columns may lie in the spare ones past the canvas. `*_ok`:
        which rows are real. Returns the logits of the clean rows (B, C, V) and of the groups (B, G, S, V)."""
        B, C = clean_cols.shape
        _, G, S = group_cols.shape
        R = C + G * S
        device = self.device
        clean_tokens = self._padded.gather(1, clean_cols)
        masks = torch.full((B, G * S), self.special.mask, dtype=torch.long, device=device)
        tokens = torch.cat((clean_tokens, masks), 1)
        cols = torch.cat((clean_cols, group_cols.reshape(B, G * S)), 1)
        positions = (cols - self._left_pad).clamp(0, self.model.cfg.block_size - 1)
        ok = torch.cat((clean_ok, group_ok.reshape(B, G * S)), 1)  # (B, R)
        reads = ok[:, :, None]
        new = (structure & ok[:, None, :] & reads) | self._eye(R)  # (B, R, R)
        first, last = int(cached.min()), int(cached.max())
        if first == last:  # every row's pass starts at one column: its prefix, then its rows
            self.cache.place(first, R)
            mask = torch.cat((self._valid[:, None, :first] & reads, new), 2)[:, None]  # (B, 1, R, first + R)
        else:  # row b's pass at cached_b … cached_b+R−1; columns past its prefix and pass are hidden
            self.cache.place(cached, R, last)
            rel = self._columns[:last + R] - cached[:, None]  # (B, Tk): key column relative to the row's pass
            prefix = (rel < 0) & self._valid[:, :last + R]
            own = new.gather(2, rel.clamp(0, R - 1)[:, None, :].expand(B, R, last + R)) & (rel >= 0)[:, None, :]
            mask = ((prefix[:, None, :] & reads) | (own & (rel < R)[:, None, :]))[:, None]  # (B, 1, R, Tk)
        logits = self.model(tokens, cache=self.cache, positions=positions, attn_mask=mask)
        self.forward_passes += 1
        return logits[:, :C], logits[:, C:].reshape(B, G, S, -1)

    def _eye(self, R: int) -> torch.Tensor:
        key = ("eye", R)
        if key not in self._structures:
            self._structures[key] = torch.eye(R, dtype=torch.bool, device=self.device)[None]
        return self._structures[key]

    def _structure(self, C: int, G: int, S: int, sees: tuple[int, ...]) -> torch.Tensor:
        """(1, R, R) which new row may read which: clean i reads clean j ≤ i; group g reads the clean rows
        below sees[g] and its own rows. The same in every pass of `_step`: kept."""
        key = (C, G, S, sees)
        if key in self._structures:
            return self._structures[key]
        R, device = C + G * S, self.device
        idx = torch.arange(R, device=device)
        is_clean = idx < C
        group_of = torch.where(is_clean, -1, (idx - C) // S)
        clean_reads = is_clean[:, None] & is_clean[None, :] & (idx[None, :] <= idx[:, None])
        same_group = ~is_clean[:, None] & (group_of[:, None] == group_of[None, :])
        row_sees = torch.cat((torch.zeros(C, dtype=torch.long, device=device),
                              torch.tensor(sees, dtype=torch.long, device=device).repeat_interleave(S)))  # (R,)
        group_reads = ~is_clean[:, None] & is_clean[None, :] & (idx[None, :] < row_sees[:, None])
        structure = (clean_reads | same_group | group_reads)[None]
        self._structures[key] = structure
        return structure

    # --- one row, away from the canvas's end ----------------------------------------------------

    def _single_row_constants(self) -> None:
        """What `_step_single_row` reuses: a pass's layout relative to its first column n − 1."""
        K, S, device = self.K, self.S, self.device
        C = K + 1
        structure = self._structure(C, K + 1, S, tuple(range(1, K + 2)))
        self._row_new = structure[0] | self._eye(C + (K + 1) * S)[0]  # every row real: (R, R)
        self._row_masks = torch.full(((K + 1) * S,), self.special.mask, dtype=torch.long, device=device)
        # columns of the pass relative to n − 1: the clean rows, then group a's masks at n + a … n + a + S − 1
        self._row_offsets = torch.cat((self._span, 1 + self._group_offsets.reshape(-1)))
        # the rows whose distributions a pass uses: the clean ones, then rows 1 … K of every group
        self._row_used = torch.cat((self._span, C + (self._span[:, None] * S + 1 + self._span[:K]).reshape(-1)))
        self._row_drafts = self._span[:K]
        self._row_bias: tuple[torch.Tensor, torch.Tensor] | None = None  # made by the first pass (`_row_mask`)

    def _row_mask(self, read: int) -> torch.Tensor:
        """The single-row pass's attention mask over the stored prefix [0, read) and the pass's rows. An additive
        bias in the network's precision (SDPA would convert a boolean mask in every layer), or boolean under
        autocast, whose queries' precision is not known here. Made on the first pass, inside the sampling's
        autocast context."""
        if self._row_bias is None:
            device, R = self.device, self._row_new.shape[0]
            if torch.is_autocast_enabled(device.type):
                new, open_ = self._row_new, torch.ones(1, dtype=torch.bool, device=device)
            else:
                dtype = next(self.model.parameters()).dtype
                new = torch.zeros(R, R, dtype=dtype, device=device).masked_fill_(~self._row_new, float("-inf"))
                open_ = torch.zeros(1, dtype=dtype, device=device)
            self._row_bias = (open_.expand(R, self.width), new)
        prefix, new = self._row_bias
        return torch.cat((prefix[:, :read], new), 1)

    def _single_row_ready(self) -> bool:
        """At batch 1, every pass but the first and the last few: all K drafts on the canvas, every group's
        columns inside it. `_step_single_row` then does exactly what `_step` does, with Python numbers for
        the decisions and about a quarter of the tensor operations (a pass is a few milliseconds on a CPU,
        and each small operation costs microseconds)."""
        return (self._one_row and not bool(self.done[0]) and int(self.n_drafts[0]) == self.K
                and int(self.n[0]) + 2 * self.K < self.width)

    def _step_single_row(self) -> int:
        """`_step` for one row (see `_single_row_ready`): the same pass, the same draws. Returns the first
        column written."""
        K, W = self.K, self.width
        n = int(self.n[0])
        row = self._padded[0]
        row[n:n + K] = self.drafts[0]
        tokens = torch.cat((row[n - 1:n + K], self._row_masks))[None]
        positions = (self._row_offsets + (n - 1)).clamp(max=self.model.cfg.block_size - 1)[None]
        mask = self._row_mask(n - 1)
        self.cache.place(n - 1, self._row_new.shape[0])
        logits = self.model(tokens, cache=self.cache, positions=positions, attn_mask=mask)
        self.forward_passes += 1
        probs = self._probs(logits[0].index_select(0, self._row_used))
        p, q_groups = probs[:K + 1], probs[K + 1:].view(K + 1, K, probs.shape[-1])
        u = torch.rand(2 * K + 1, dtype=torch.float64, generator=self.generators[0], device=self.device)
        drafts, at = self.drafts[0], self._row_drafts
        checks = torch.cat((p[at, drafts], self.q[0, at, drafts], u[:K])).tolist()
        a = 0
        while a < K and checks[2 * K + a] * checks[K + a] < checks[a]:  # u·q(d) < p(d): accepted
            a += 1
        target = p[a:a + 1]
        if a < K:  # after a rejection, the residual max(0, p − q) of that position
            residual = (target - self.q[0, a:a + 1]).clamp(min=0)
            mass = residual.sum(-1, keepdim=True)
            if float(mass) > 1e-12:
                target = residual / mass.clamp(min=1e-300)
        token = self._draw(target, u[K:K + 1])
        row[n + a:n + a + 1] = token
        row[n + a + 1:n + K + 1] = self.special.mask
        self.q = q_groups[a:a + 1]
        self.drafts = self._draw(self.q, u[None, K + 1:])
        end = n + a + 1
        if self.cfg.stop_at_eos:
            written = row[n:end].tolist()
            if self.special.eos in written:
                self.x[0, n + written.index(self.special.eos) + 1:] = self.special.pad
                end = W
        self.n.fill_(end)
        self.n_drafts.fill_(min(max(W - end, 0), K))
        if end >= W:
            self.done.fill_(True)
        return n

    # --- the loop ------------------------------------------------------------------------------

    def _set_drafts(self, q: torch.Tensor, u: torch.Tensor) -> None:
        """Draw the next drafts from q (B, B − 1, V), the distributions of a block's rows 1 … B−1 (row 0 is
        the column just committed); u: (B, B − 1) uniforms."""
        self.drafts = self._draw(q, u)
        self.q = q
        self.n_drafts = (self.width - self.n).clamp(0, self.K).masked_fill(self.done, 0)

    def _start(self) -> int:
        """Read the prompt (stored), draw each row's first token and its first drafts. Returns the first
        column written."""
        B, S = self.x.shape[0], self.start
        cols = self._columns[:S].expand(B, S)
        ok = self.canvas.valid[:, :S]
        first = torch.full((B,), S, dtype=torch.long, device=self.device)
        group_cols = first[:, None, None] + self._group_span
        group_ok = group_cols < self.width
        cached = torch.zeros(B, dtype=torch.long, device=self.device)
        structure = self._structure(S, 1, self.S, (S,))
        clean_logits, group_logits = self._forward(cols, ok, group_cols, group_ok, structure, cached)
        # With a prompt, the first token comes from the clean copy (next-token); without, from the block.
        has_prompt = ok[:, -1] if S else torch.zeros(B, dtype=torch.bool, device=self.device)
        first_logits = group_logits[:, 0, 0]
        if S:
            first_logits = torch.where(has_prompt[:, None], clean_logits[:, -1], first_logits)
        u = self._uniform(self.K + 1)
        token = self._draw(self._probs(first_logits), u[:, 0])
        self.x[:, S] = token
        self.n += 1
        self._end_rows_at_eos(first, torch.ones(B, 1, dtype=torch.bool, device=self.device))
        self._set_drafts(self._probs(group_logits[:, 0, 1:self.K + 1]), u[:, 1:])
        return S

    def _step(self) -> int:
        """Verify the drafts, commit the accepted ones and one drawn token, draw new drafts.
        Returns the first column any row wrote."""
        B, K, W = self.x.shape[0], self.K, self.width
        n, k = self.n, self.n_drafts  # k ≤ K drafts at columns n … n+k−1
        live = ~self.done
        cols = n[:, None] + self._span  # (B, K + 1): columns n … n+K
        # The drafts go on the canvas so the clean rows can read them; rejected ones are overwritten. Drafts
        # past the canvas's end (k < K) and a finished row's (n = W) land in the spare columns.
        if K:
            self._padded.scatter_(1, cols[:, :K], self.drafts)
        clean_ok = (self._span[None] <= k[:, None]) & live[:, None]  # the last token, then the drafts
        group_cols = n[:, None, None] + self._group_offsets  # (B, K + 1, B)
        group_ok = (group_cols < W) & clean_ok[:, :, None]  # outcome a exists only when a ≤ k
        structure = self._structure(K + 1, K + 1, self.S, tuple(range(1, K + 2)))
        clean_logits, group_logits = self._forward(cols - 1, clean_ok, group_cols, group_ok, structure, n - 1)
        # Every distribution of the pass in one go: the next-token ones (B, K + 1, V) at columns n … n+K, and
        # every group's drafting rows 1 … B−1 (B, K + 1, K, V), of which the outcome's group is kept below.
        V = clean_logits.shape[-1]
        probs = self._probs(torch.cat((clean_logits, group_logits[:, :, 1:K + 1].reshape(B, (K + 1) * K, V)), 1))
        p, q_groups = probs[:, :K + 1], probs[:, K + 1:].view(B, K + 1, K, V)
        # Speculative sampling: accept draft i with probability min(1, p(d)/q(d)), in order.
        u = self._uniform(2 * K + 1)  # K acceptance tests, one draw, K new drafts
        if K:
            p_d = p[:, :K].gather(-1, self.drafts[..., None]).squeeze(-1)
            q_d = self.q.gather(-1, self.drafts[..., None]).squeeze(-1)
            accept = (u[:, :K] * q_d < p_d) & (self._span[None, :K] < k[:, None])
            a = accept.long().cumprod(1).sum(1)  # drafts accepted, in order
        else:
            a = torch.zeros(B, dtype=torch.long, device=self.device)
        at_a = a[:, None, None].expand(B, 1, V)
        target = p.gather(1, at_a).squeeze(1)
        if K:  # after a rejection, the residual max(0, p − q) of that position
            rejected = a < k
            q_a = self.q.gather(1, at_a.clamp(max=K - 1)).squeeze(1)
            residual = (target - q_a).clamp(min=0)
            mass = residual.sum(-1, keepdim=True)
            use = rejected[:, None] & (mass > 1e-12)
            target = torch.where(use, residual / mass.clamp(min=1e-300), target)
        token = self._draw(target, u[:, K])
        room = live & (n + a < W)  # every draft up to the last column accepted: nothing to add
        # One write over columns n … n+K: the accepted drafts stay, the drawn token goes at n + a, and [MASK]
        # after it (the rejected drafts were written only to be read). Past the canvas: the spare columns.
        j, a_col = self._span[None], a[:, None]
        kept = torch.cat((self.drafts, self.drafts[:, :1]), 1) if K else token[:, None]
        values = torch.where(j < a_col, kept, torch.where(j == a_col, token[:, None], self.special.mask))
        self._padded.scatter_(1, cols, values)
        count = torch.where(live, a + room.long(), 0)
        first = n
        self.n = n + count
        self._end_rows_at_eos(first, j < count[:, None])
        self._set_drafts(q_groups.gather(1, a[:, None, None, None].expand(B, 1, K, V)).squeeze(1), u[:, K + 1:])
        return int(first.min())

    def _end_rows_at_eos(self, first: torch.Tensor, written: torch.Tensor) -> None:
        """Mark rows that reached their last column, or wrote [EOS] with stop_at_eos (then [PAD] after it)."""
        if self.cfg.stop_at_eos:
            cols = (first[:, None] + self._span[:written.shape[1]]).clamp(max=self.width - 1)
            eos = written & (self.x.gather(1, cols) == self.special.eos)
            for b in eos.any(1).nonzero().flatten().tolist():
                end = int(cols[b][eos[b]][0])
                self.x[b, end + 1:] = self.special.pad
                self.n[b] = self.width
        self.done |= self.n >= self.width

    def steps(self) -> Iterator[DenoiseStep]:
        """Run the sampler, yielding the canvas after every forward pass (what it committed)."""
        before = self.x.clone()
        first = self._start()
        while True:
            self.step_count += 1
            changed = self.x != before  # a pass writes only where the canvas was [MASK]
            nothing = torch.zeros_like(changed)
            yield DenoiseStep(self.step_count, self.x.clone(), changed, nothing, nothing, (first, int(self.n.max())),
                              self.forward_passes)
            if bool(self.done.all()):
                break
            before = self.x.clone()
            first = self._step_single_row() if self._single_row_ready() else self._step()
        gen = ~self.canvas.fixed & self.canvas.valid
        assert not bool(((self.x == self.special.mask) & gen).any()), "sampler left a [MASK]"

    def run(self) -> GenerationResult:
        for _ in self.steps():
            pass
        return self.result()

    def result(self) -> GenerationResult:
        return GenerationResult(self.x.clone(), self.canvas.valid.clone(), ~self.canvas.fixed & self.canvas.valid,
                                self.forward_passes, self.step_count, self.special.pad)
