"""Self-speculative block decoding: a block model drafts with its noisy block and checks with its clean copy.

A block-diffusion model trained with `model.clean_causal` and `diffusion.clean_ar_weight > 0` reads text
in two ways: its clean copy is a next-token (causal) model, and its noisy block fills B masked positions
in parallel from the clean text before them. One forward pass does both jobs (TiDAR, Liu et al. 2025):

* clean rows verify. The last committed token and the k ≤ K drafted tokens after it (K = `drafts`), read
  causally, give the next-token distribution p at each of k + 1 positions. Every column c of a row has its
  own exponential noise E_c (V values, drawn from the row's generator in column order), and the token
  written at c is argmax p / E_c: a draw from p (the exponential race, i.e. the Gumbel-max trick, computed
  as argmax log p − log E_c, with no softmax). Drafts are accepted while they equal those tokens; the first
  that does not is replaced by it.
* noisy rows draft. For every possible number a of accepted drafts there is a group of K + 1 masks right
  after them (positions n+a … n+a+K), reading the clean text up to the accepted ones. The group of the
  outcome that happened supplies the next K drafts, argmax q / E_c with the same noise: the positions
  after the token just written, which the group saw as a mask. With K = B − 1 a group is a whole block;
  with fewer drafts it is the start of one, and a pass carries (K + 1)(K + 2) rows instead of B(B + 1).

So the committed text is the clean copy's next-token sample for the row's noise (after temperature, top-k
and top-p), whatever the drafts are: the same text for every K, alone or in a batch. The drafts decide
only how many tokens a forward pass commits: 1 to K + 1. (Speculative sampling's accept-with-probability
min(1, p/q) rule, Leviathan et al. 2023, accepts a little more often, 1.59 tokens a pass against 1.52 with
one draft on Shakespeare, but what it writes depends on the drafts, and so on K; docs/block-diffusion.md.)

Drafted blocks start wherever the text has got to, not at multiples of B. The model cannot tell the
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
from dlm.sampling.base import filter_logits, row_generators
from dlm.sampling.canvas import Canvas
from dlm.sampling.config import SamplerConfig
from dlm.sampling.denoiser import DenoiseStep, GenerationResult
from dlm.special_ids import SpecialIds


def default_drafts(batch: int, block: int, device: str = "cpu", vocab_size: int = 0) -> int:
    """Drafts per pass when `SamplerConfig.drafts` is None. A pass of K drafts carries (K + 1)(K + 2) rows (6
    for one draft, 12 for 2, 20 for 3) and commits up to K + 1 tokens; with none it is the clean copy's one
    row and one token (`_step_draftless`, a lean pass). On a CPU, 2 drafts were the fastest at batch 1; rows
    cost compute there, and from a batch of DRAFTLESS_BATCH on no drafts were (bench/drafts_by_batch.py;
    docs/block-diffusion-notebook.md, 2026-12-06, fifth session), as servers turn speculative decoding off for large
    batches. An accelerator, where a few more rows cost little, keeps one draft for a batch (not measured
    yet). The text does not depend on K, so the batch may choose.

    A vocabulary above DRAFTING_VOCAB (a BPE's) drafts nothing on a CPU: a BPE token carries about 3.7 nats where
    a character carries 1.5, so drafts of the tokens after the next are seldom right, and each extra row's head is
    wider. With 2,048 BPE tokens no drafts were fastest at every batch, 0.99× the twin's characters a second at
    batch 1 against 0.58× with two (AMD EPYC, AVX512-BF16 class, float32; docs/block-diffusion-notebook.md,
    2026-12-07, third session)."""
    if device == "cpu" and vocab_size > DRAFTING_VOCAB:
        return 0
    many = batch >= DRAFTLESS_BATCH and device == "cpu"
    return min(2 if batch == 1 else 0 if many else 1, block - 1)


DRAFTLESS_BATCH = 2
"""From this many rows on, the default drafts nothing (`default_drafts`)."""

DRAFTING_VOCAB = 256
"""The largest vocabulary whose runs draft by default on a CPU: characters (69 for Tiny Shakespeare) draft, a
byte-level BPE (256 bytes and its merges) does not (`default_drafts`)."""

NOISE_CHUNK_VALUES = 1 << 16
"""A row's noise is drawn ahead in chunks of about this many values (columns × vocabulary): few generator
calls for a character vocabulary, one column at a time for a large one."""


def check_drafts(drafts: int | None, block: int) -> None:
    """A block of B drafts at most B − 1 tokens a pass (None: the default)."""
    if drafts is not None and drafts > block - 1:
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
        # else where each of a pass's (row, head, position) vectors goes in a layer's cache seen as
        # (B·H·columns, D): one row-wise index_copy_, about half the time of scatter_ over a (B, H, R, D) index
        self.index: torch.Tensor | None = None
        self.end = 0
        B, H, C = shape[1:4]
        self._head_base = (torch.arange(B, device=device)[:, None, None] * H
                           + torch.arange(H, device=device)[None, :, None]) * C  # (B, H, 1)

    def place(self, start: torch.Tensor | int, rows: int, last: int | None = None) -> None:
        """The next pass's rows go to columns start … start+rows−1 of each row: one int for every row, or
        `start` (B,) with `last` its largest value."""
        if isinstance(start, int):
            self.start, self.index, self.end = start, None, start + rows
            return
        offsets = torch.arange(rows, device=start.device)
        self.index = (self._head_base + (start[:, None] + offsets)[:, None, :]).view(-1)  # (B·H·R,)
        self.end = last + rows

    def span(self, n_tokens: int) -> tuple[int, int]:
        return 0, 0  # positions are always given explicitly; the range check reads them

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = k.to(self.k.dtype), v.to(self.v.dtype)
        if self.index is None:
            self.k[layer, :, :, self.start:self.end] = k
            self.v[layer, :, :, self.start:self.end] = v
        else:
            D = k.shape[-1]
            self.k[layer].view(-1, D).index_copy_(0, self.index, k.reshape(-1, D))
            self.v[layer].view(-1, D).index_copy_(0, self.index, v.reshape(-1, D))
        return self.k[layer, :, :, :self.end], self.v[layer, :, :, :self.end]

    def advance(self, n_tokens: int) -> None:
        pass


class SelfSpeculativeDecoder:
    """Continue each row of a canvas (prompt columns fixed, the rest [MASK]) left to right."""

    def __init__(self, model: torch.nn.Module, canvas: Canvas, config: SamplerConfig, special: SpecialIds,
                 block: int, seeds: list[int] | None = None):
        self.model, self.cfg, self.special, self.block = model, config, special, block
        check_drafts(config.drafts, block)
        B, W = canvas.tokens.shape
        # K drafts checked per pass; each drafting group is K + 1 masks (the token drawn in the pass, then
        # the next K drafts), fewer than the block's B when K < B − 1.
        vocab = getattr(getattr(model, "cfg", None), "vocab_size", 0)
        self.K = min(default_drafts(B, block, canvas.tokens.device.type, vocab) if config.drafts is None
                     else config.drafts, block - 1)
        self.S = self.K + 1
        self.G = self.K + 1 if self.K else 0  # a group per outcome; with no drafts a pass is the clean row alone
        self.canvas = canvas
        # The canvas and spare columns past its end: a pass writes its drafts (and resets them) at n … n+K
        # unconditionally, and what lies past the canvas lands in the spare columns, which nothing reads.
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
        # Each row's noise (Gumbel, −log E), a ring of columns: a pass reads columns n … n+2K (its tokens, then the
        # next drafts), and a row draws a chunk of columns ahead at a time, always in column order, so the noise
        # of a column is the same whatever K is and whatever else is in the batch.
        V = model.cfg.vocab_size
        self._chunk = max(1, min(32, NOISE_CHUNK_VALUES // V))
        self._ring = 2 * self.K + self._chunk
        self._noise = torch.empty(B, self._ring, V, dtype=torch.float64, device=self.device)
        self._drawn = [start] * B  # per row: the first column whose noise is not drawn yet
        self._ring_index = torch.arange(2 * self._ring, device=self.device) % self._ring
        self._pass_span = torch.arange(2 * self.K + 1, device=self.device)
        self.forward_passes = 0
        self.step_count = 0
        cfg = model.cfg
        # One row, every column valid: most passes take `_step_single_row`.
        self._one_row = B == 1 and bool(canvas.valid.all())
        rows = max((self.K + 1) * (1 + self.S), self.S)  # a pass's rows (a prompt's start at column 0 fits)
        self.cache = RowCache(cfg.n_layer, B, cfg.n_head, W, cfg.d_model // cfg.n_head,
                              self.device, next(model.parameters()).dtype, scratch=rows)
        # Added to the logits (and promoting them to float64) in one operation: −inf for the ids never drawn, −the
        # [EOS] penalty for [EOS], 0 elsewhere (x + 0 and x − p are exact as before, in float64).
        self._score_bias = torch.zeros(V, dtype=torch.float64, device=self.device)
        self._score_bias[[special.mask, special.pad, special.bos]] = float("-inf")
        self._score_bias[special.eos] -= config.eos_penalty
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
        self._draftless_mask: torch.Tensor | None = None  # made by the first `_step_draftless`
        self._column = start + 1  # with no drafts, the column every live row writes next
        self._row_next: int | None = None  # after a single-row pass, the row's next column (else None)

    # --- distributions and draws ---------------------------------------------------------------

    def _scores(self, logits: torch.Tensor) -> torch.Tensor:
        """log p up to a constant per row, for the distribution tokens are drawn from: specials suppressed,
        then temperature, top-k, top-p (−inf outside). Temperature 0: 0 at the argmax, −inf elsewhere
        (greedy). No softmax: argmax (log p + Gumbel) does not need the normaliser."""
        logits = filter_logits(self._score_bias + logits, self.cfg.top_k, self.cfg.top_p)
        if self.cfg.temperature <= 0:
            return torch.full_like(logits, float("-inf")).scatter_(-1, logits.argmax(-1, keepdim=True), 0.0)
        if self.cfg.temperature != 1.0:  # (dividing by 1 changes nothing: skipped)
            logits = logits / self.cfg.temperature
        return logits

    def _draw_noise(self, last: list[int]) -> None:
        """Draw row b's noise through column last[b] and a chunk beyond, if not drawn yet (−1: nothing)."""
        L, V = self._ring, self._noise.shape[-1]
        for b, end in enumerate(last):
            drawn = self._drawn[b]
            if end < drawn:
                continue
            m = end + self._chunk - drawn  # ≤ the ring: the row's next column n ≤ drawn, and end = n + 2K
            g = self.generators[b]
            fresh = torch.empty(m, V, dtype=torch.float64, device=g.device).exponential_(generator=g)
            fresh = fresh.clamp_(min=1e-300).log_().neg_().to(self.device)  # Gumbel −log E (E = 0 would be +inf)
            slot = (drawn - self.start) % L
            head = min(m, L - slot)
            self._noise[b, slot:slot + head] = fresh[:head]
            self._noise[b, :m - head] = fresh[head:]
            self._drawn[b] = drawn + m

    def _noise_from(self, n: torch.Tensor) -> torch.Tensor:
        """(B, 2K + 1, V): each row's noise at columns n … n+2K (drawn)."""
        slots = (n[:, None] - self.start + self._pass_span) % self._ring
        return self._noise.gather(1, slots[..., None].expand(-1, -1, self._noise.shape[-1]))

    @staticmethod
    def _pick(scores: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """argmax (log p − log E) = argmax p / E over the vocabulary, E ~ Exp(1): a draw from p (the Gumbel-max
        trick). scores (`_scores`) and Gumbel noise −log E (..., V) → ids (...)."""
        return (scores + noise).argmax(-1)

    # --- one forward pass ----------------------------------------------------------------------

    def _forward(self, clean_cols: torch.Tensor, clean_ok: torch.Tensor, group_cols: torch.Tensor,
                 group_ok: torch.Tensor, structure: torch.Tensor, cached: torch.Tensor,
                 all_rows: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Clean rows at columns `clean_cols` (B, C), causal among themselves; noisy groups of masks at
        `group_cols` (B, G, S); `structure` (1, R, R), which new row reads which (`_structure`); all reading
        the stored columns below `cached` (B,). Columns may lie in the spare ones past the canvas. `*_ok`:
        which rows are real. The rows go in as: the clean ones, every group's drafting rows 1 … S−1, then every
        group's row 0, whose output only `_start` reads: without `all_rows` the last layer computes the rows
        before them alone. Returns the logits of the clean rows (B, C, V), of the drafting rows (B, G, S − 1, V)
        and, with `all_rows`, of the groups' rows 0 (B, G, V)."""
        B, C = clean_cols.shape
        _, G, S = group_cols.shape
        R, drafting = C + G * S, G * (S - 1)
        device = self.device
        clean_tokens = self._padded.gather(1, clean_cols)
        masks = torch.full((B, G * S), self.special.mask, dtype=torch.long, device=device)
        tokens = torch.cat((clean_tokens, masks), 1)
        cols = torch.cat((clean_cols, group_cols[:, :, 1:].reshape(B, drafting), group_cols[:, :, 0]), 1)
        positions = (cols - self._left_pad).clamp(0, self.model.cfg.block_size - 1)
        ok = torch.cat((clean_ok, group_ok[:, :, 1:].reshape(B, drafting), group_ok[:, :, 0]), 1)  # (B, R)
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
        logits = self.model(tokens, cache=self.cache, positions=positions, attn_mask=self._additive(mask),
                            queries=None if all_rows else C + drafting)
        self.forward_passes += 1
        firsts = logits[:, C + drafting:] if all_rows else None
        return logits[:, :C], logits[:, C:C + drafting].reshape(B, G, S - 1, logits.shape[-1]), firsts

    def _additive(self, mask: torch.Tensor) -> torch.Tensor:
        """A boolean attention mask as an additive bias in the network's precision, made once a pass (SDPA
        would convert a boolean mask in every layer); boolean under autocast, whose precision is not known here."""
        if torch.is_autocast_enabled(self.device.type):
            return mask
        dtype = next(self.model.parameters()).dtype
        return torch.zeros(mask.shape, dtype=dtype, device=self.device).masked_fill_(~mask, float("-inf"))

    def _eye(self, R: int) -> torch.Tensor:
        key = ("eye", R)
        if key not in self._structures:
            self._structures[key] = torch.eye(R, dtype=torch.bool, device=self.device)[None]
        return self._structures[key]

    def _structure(self, C: int, G: int, S: int, sees: tuple[int, ...]) -> torch.Tensor:
        """(1, R, R) which new row may read which, rows in `_forward`'s order: clean i reads clean j ≤ i; a
        group's row reads the clean rows below sees[g] and its group's rows. The same in every pass of `_step`:
        kept."""
        key = (C, G, S, sees)
        if key in self._structures:
            return self._structures[key]
        R, device = C + G * S, self.device
        idx = torch.arange(R, device=device)
        is_clean = idx < C
        rel, drafting = idx - C, G * (S - 1)  # after the clean rows: G × (S − 1) drafting rows, then G rows 0
        group_of = torch.where(is_clean, -1, torch.where(rel < drafting, rel // max(S - 1, 1), rel - drafting))
        clean_reads = is_clean[:, None] & is_clean[None, :] & (idx[None, :] <= idx[:, None])
        same_group = ~is_clean[:, None] & (group_of[:, None] == group_of[None, :])
        sees_of = torch.tensor(sees or (0,), dtype=torch.long, device=device)
        row_sees = torch.where(is_clean, 0, sees_of[group_of.clamp(min=0)])
        group_reads = ~is_clean[:, None] & is_clean[None, :] & (idx[None, :] < row_sees[:, None])
        structure = (clean_reads | same_group | group_reads)[None]
        self._structures[key] = structure
        return structure

    # --- one row, away from the canvas's end ----------------------------------------------------

    def _single_row_constants(self) -> None:
        """What `_step_single_row` reuses: a pass's layout relative to its first column n − 1."""
        K, S, G, device = self.K, self.S, self.G, self.device
        C = K + 1
        structure = self._structure(C, G, S, tuple(range(1, G + 1)))
        self._row_new = structure[0] | self._eye(C + G * S)[0]  # every row real: (R, R)
        self._row_masks = torch.full((G * S,), self.special.mask, dtype=torch.long, device=device)
        # columns of the pass relative to n − 1, in `_forward`'s order: the clean rows, then group a's masks at
        # n + a + 1 … n + a + K (its drafting rows), then every group's first mask, at n + a
        self._row_offsets = torch.cat((self._span, 1 + self._group_offsets[:G, 1:].reshape(-1),
                                       1 + self._group_offsets[:G, 0]))
        self._row_queries = C + G * K  # the rows whose distributions a pass uses (the rest: rows 0)
        self._row_draft_noise = self._span[:, None] + 1 + self._span[:K]  # group a drafts n+a+1 … n+a+K
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
        if self._row_next is not None:  # the last pass was a single-row one: it left n as a Python number
            return self._row_next + 2 * self.K < self.width
        return (self._one_row and not bool(self.done[0]) and int(self.n_drafts[0]) == self.K
                and int(self.n[0]) + 2 * self.K < self.width)

    def _step_single_row(self) -> int:
        """`_step` for one row (see `_single_row_ready`): the same pass, the same draws. Returns the first
        column written."""
        K, W = self.K, self.width
        n = int(self.n[0]) if self._row_next is None else self._row_next
        row = self._padded[0]
        row[n:n + K] = self.drafts[0]
        tokens = torch.cat((row[n - 1:n + K], self._row_masks))[None]
        positions = (self._row_offsets + (n - 1)).clamp(max=self.model.cfg.block_size - 1)[None]
        mask = self._row_mask(n - 1)
        self.cache.place(n - 1, self._row_new.shape[0])
        logits = self.model(tokens, cache=self.cache, positions=positions, attn_mask=mask, queries=self._row_queries)
        self.forward_passes += 1
        scores = self._scores(logits[0])
        p, q_groups = scores[:K + 1], scores[K + 1:].view(K + 1, K, scores.shape[-1])
        self._draw_noise([n + 2 * K])
        slot = (n - self.start) % self._ring
        noise = self._noise[0].index_select(0, self._ring_index[slot:slot + 2 * K + 1])  # columns n … n+2K
        tokens = self._pick(p, noise[:K + 1])
        decided = torch.cat((tokens, self.drafts[0])).tolist()
        a = 0
        while a < K and decided[K + 1 + a] == decided[a]:  # a draft is accepted when it is the token
            a += 1
        row[n:n + a + 1] = tokens[:a + 1]
        if K:
            row[n + a + 1:n + K + 1] = self.special.mask
            drafts = self._pick(q_groups[a], noise[self._row_draft_noise[a]])  # the outcome's group's drafts
            self.drafts = drafts[None]
        end = n + a + 1
        if self.cfg.stop_at_eos and self.special.eos in decided[:a + 1]:
            self.x[0, n + decided.index(self.special.eos) + 1:] = self.special.pad
            end = W
        self.n.fill_(end)
        self.n_drafts.fill_(min(max(W - end, 0), K))
        if end >= W:
            self.done.fill_(True)
        self._row_next = end  # n, n_drafts and done follow from it: the next pass need not read them back
        return n

    # --- no drafts: the clean copy writes alone --------------------------------------------------

    def _step_draftless(self) -> int:
        """`_step` with no drafts (K = 0): the same pass, the same draws, in a dozen tensor operations instead of
        about sixty (at small batches the sampler's own work is a large share of a pass). Every row writes one
        token a pass, so the live rows all stand at one column. Returns it."""
        if self._draftless_mask is None:  # made inside the sampling's autocast context, as `_additive` needs
            self._draftless_mask = self._additive(self._valid[:, None, None, :self.width])
            bound = self.model.cfg.block_size - 1
            self._draftless_positions = (self._columns[:self.width] - self._left_pad).clamp(0, bound)
        n, live = self._column, ~self.done
        self.cache.place(n - 1, 1)  # the column written last goes to the cache; the pass reads every column before it
        logits = self.model(self.x[:, n - 1:n], cache=self.cache, positions=self._draftless_positions[:, n - 1:n],
                            attn_mask=self._draftless_mask[..., :n])
        self.forward_passes += 1
        self._draw_noise([n] * self.x.shape[0])  # a finished row draws too: nothing of it is read again
        token = self._pick(self._scores(logits[:, 0]), self._noise[:, (n - self.start) % self._ring])
        self.x[:, n] = torch.where(live, token, self.x[:, n])
        first = self.n
        self.n = self.n + live
        self._column = n + 1
        self._end_rows_at_eos(first, live[:, None])
        return n

    # --- the loop ------------------------------------------------------------------------------

    def _set_drafts(self, drafts: torch.Tensor) -> None:
        """The next drafts (B, K), at columns n … n+K−1 of each row."""
        self.drafts = drafts
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
        clean_logits, drafting, firsts = self._forward(cols, ok, group_cols, group_ok, structure, cached, all_rows=True)
        # With a prompt, the first token comes from the clean copy (next-token); without, from the block.
        has_prompt = ok[:, -1] if S else torch.zeros(B, dtype=torch.bool, device=self.device)
        first_logits = firsts[:, 0]
        if S:
            first_logits = torch.where(has_prompt[:, None], clean_logits[:, -1], first_logits)
        self._draw_noise([S + 2 * self.K] * B)
        noise = self._noise_from(first)
        self.x[:, S] = self._pick(self._scores(first_logits), noise[:, 0])
        self.n += 1
        self._end_rows_at_eos(first, torch.ones(B, 1, dtype=torch.bool, device=self.device))
        self._set_drafts(self._pick(self._scores(drafting[:, 0]), noise[:, 1:self.K + 1]))
        return S

    def _step(self) -> int:
        """Verify the drafts, commit the accepted ones and one drawn token, draw new drafts.
        Returns the first column any row wrote."""
        self._row_next = None  # n moves here as a tensor
        B, K, W = self.x.shape[0], self.K, self.width
        n, k = self.n, self.n_drafts  # k ≤ K drafts at columns n … n+k−1
        live = ~self.done
        cols = n[:, None] + self._span  # (B, K + 1): columns n … n+K
        # The drafts go on the canvas so the clean rows can read them; rejected ones are overwritten. Drafts
        # past the canvas's end (k < K) and a finished row's (n = W) land in the spare columns.
        if K:
            self._padded.scatter_(1, cols[:, :K], self.drafts)
        clean_ok = (self._span[None] <= k[:, None]) & live[:, None]  # the last token, then the drafts
        G = self.G
        group_cols = n[:, None, None] + self._group_offsets[:G]  # (B, G, S): a group for every outcome a ≤ k
        group_ok = (group_cols < W) & clean_ok[:, :G, None]
        structure = self._structure(K + 1, G, self.S, tuple(range(1, G + 1)))
        clean_logits, drafting, _ = self._forward(cols - 1, clean_ok, group_cols, group_ok, structure, n - 1)
        # Every distribution of the pass in one go: the next-token ones (B, K + 1, V) at columns n … n+K, and
        # every group's drafting rows (B, K + 1, K, V), of which the outcome's group is kept below.
        V = clean_logits.shape[-1]
        scores = self._scores(torch.cat((clean_logits, drafting.reshape(B, (K + 1) * K, V)), 1))
        p, q_groups = scores[:, :K + 1], scores[:, K + 1:].view(B, K + 1, K, V)
        # Each column's token is argmax p / E for its noise E; a draft is accepted when it is that token.
        self._draw_noise(torch.where(live, n + 2 * K, -1).tolist())
        noise = self._noise_from(n)  # columns n … n+2K
        tokens = self._pick(p, noise[:, :K + 1])  # (B, K + 1)
        if K:
            accept = (self.drafts == tokens[:, :K]) & (self._span[None, :K] < k[:, None])
            a = accept.long().cumprod(1).sum(1)  # drafts accepted, in order
        else:
            a = torch.zeros(B, dtype=torch.long, device=self.device)
        room = live & (n + a < W)  # every draft up to the last column accepted: nothing to add
        # One write over columns n … n+K: the accepted drafts and the token after them (the tokens up to n + a),
        # then [MASK] (the rejected drafts were written only to be read). Past the canvas: the spare columns.
        j, a_col = self._span[None], a[:, None]
        self._padded.scatter_(1, cols, torch.where(j <= a_col, tokens, self.special.mask))
        count = torch.where(live, a + room.long(), 0)
        first = n
        self.n = n + count
        self._end_rows_at_eos(first, j < count[:, None])
        q = q_groups.gather(1, a[:, None, None, None].expand(B, 1, K, V)).squeeze(1)  # the outcome's group
        next_noise = noise.gather(1, (a_col + 1 + self._span[:K])[..., None].expand(B, K, V))
        self._set_drafts(self._pick(q, next_noise))
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

    def _advance(self) -> int:
        """One forward pass and what it commits. Returns the first column written."""
        if not self.K:
            return self._step_draftless()
        return self._step_single_row() if self._single_row_ready() else self._step()

    def _finished(self) -> bool:
        if self._row_next is not None:  # after a single-row pass: a Python number, no tensor read
            return self._row_next >= self.width
        return bool(self.done.all())

    def _check_complete(self) -> None:
        gen = ~self.canvas.fixed & self.canvas.valid
        assert not bool(((self.x == self.special.mask) & gen).any()), "sampler left a [MASK]"

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
            if self._finished():
                break
            before = self.x.clone()
            first = self._advance()
        self._check_complete()

    def run(self) -> GenerationResult:
        """`steps` without the frames (a copy of the canvas and two masks a pass: a noticeable share of a pass at
        batch 1 on a CPU); `sample` takes it when nothing watches the steps."""
        self._start()
        self.step_count = 1
        while not self._finished():
            self._advance()
            self.step_count += 1
        self._check_complete()
        return self.result()

    def result(self) -> GenerationResult:
        return GenerationResult(self.x.clone(), self.canvas.valid.clone(), ~self.canvas.fixed & self.canvas.valid,
                                self.forward_passes, self.step_count, self.special.pad)
