"""Every sampling option in one typed config; the CLI flags and `Pipeline.generate` map onto it.

Options combine freely: an unmasking order, the committed-per-step counts of a noise schedule,
optional confidence-threshold parallel decoding, semi-autoregressive blocks with or without a KV
cache, ReMDM remasking, editing of visible tokens, classifier-free guidance and a stop at the
first completed [EOS]. The defaults (random order, temperature 0.8, over the whole canvas) are the
measured best of docs/study.md, "The default sampler": confidence decoding, the old default,
collapses into repetition. An AR run samples at AR_TEMPERATURE (1) unless given a temperature; a
block-diffusion run whose clean copy learnt next-token prediction decodes self-speculatively at
temperature 1, and other block runs (and templates) in their blocks with confidence order and
threshold 0.9 (dlm.inference applies these; docs/block-diffusion.md).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from dlm.errors import DlmError

ORDERS = ("confidence", "margin", "entropy", "random", "ancestral")
# The AR twin samples from its own distribution unless told otherwise (diffusion: SamplerConfig's default).
AR_TEMPERATURE = 1.0


@dataclass
class SamplerConfig:
    sampler: str = "random"
    """Unmasking order (default random: chosen by measurement, docs/study.md, "The default sampler").
    confidence: commit the drawn tokens the model gives the highest probability;
    margin: largest top-1 − top-2 probability; entropy: lowest predictive entropy; random: a uniformly
    random order; ancestral: MDLM's reverse step (each mask revealed with probability
    (α_s − α_t)/(1 − α_t), so the count per step is random)."""
    steps: int = 256
    """Denoising steps over the whole canvas (shared among blocks when block_length > 0)."""
    temperature: float = 0.8
    """Softmax temperature of the token draws; 0 = greedy. Default 0.8 for diffusion models (measured,
    docs/study.md, "The default sampler"); an AR run samples at 1 (AR_TEMPERATURE, its own distribution)
    unless a temperature is given."""
    top_k: int = 0
    """Draw from the k most likely tokens only (0 = all)."""
    top_p: float = 1.0
    """Nucleus sampling: draw from the smallest set of tokens holding this mass (1 = off)."""
    repetition_penalty: float = 1.0
    """> 1 discourages tokens already visible in the sequence (CTRL-style: positive logits divided,
    negative multiplied); special tokens are never counted or penalised. 1 = off."""
    schedule: str = "linear"
    """Noise schedule that sets how many masks remain after each step (any training schedule)."""
    threshold: float = 0.0
    """Fast-dLLM parallel decoding: also commit every masked position whose drawn token has model
    probability above this, so a step may commit many (at least one); decoding ends when no mask is
    left, often long before `steps`. 0 = off. With threshold 1.0 nothing passes and decoding is
    one-token-per-step confidence decoding."""
    block_length: int = 0
    """Semi-autoregressive decoding (LLaDA / BD3-LM): fill the canvas block by block, left to right,
    diffusion inside each block. 0 = the whole canvas at once."""
    block_context: str = "canvas"
    """What a block attends to. canvas: the whole canvas, masks to the right included (LLaDA);
    prefix: only the committed blocks before it and itself (BD3-LM; the right is not fed)."""
    aligned_blocks: bool = False
    """With block_length: blocks start at multiples of block_length in each row's positions, as a
    block-diffusion (bd3) model was trained, instead of at the first generated token. The prompt is
    then encoded block by block and its last, partial block is denoised together with the first
    generated tokens. Set by default for bd3 runs. Rows of one batch must agree on prompt length
    modulo block_length (dlm.inference groups them)."""
    kv_cache: bool = False
    """With block_length: cache keys and values outside the current block. With block_context=prefix
    the cache is exact (each committed block is encoded once, as the uncached run sees it); with
    block_context=canvas it is Fast-dLLM's dual cache, approximate: prefix and suffix keys are
    refreshed once per block, not after every step."""
    reuse_logits: bool = True
    """MDLM's cache: when no token changed since the last forward pass (a step that committed
    nothing), reuse its logits instead of running the model again. Exact; skipped for
    time-conditioned models, whose input t changes every step."""
    remask: float = 0.0
    """ReMDM remasking strength η: after each step, already generated tokens are turned back into
    masks with probability σ_t (see remask_schedule), so later steps can revise them. 0 = off."""
    remask_schedule: str = "cap"
    """ReMDM σ_t: cap = min(η, (1 − α_s)/α_t); rescale = η·(1 − α_s)/α_t."""
    remask_by: str = "confidence"
    """Which generated tokens are remasked first: confidence (lowest probability when committed,
    ReMDM-conf) or random."""
    edit_threshold: float = 0.0
    """Editing (for models trained with diffusion.edit_prob > 0): a visible generated token whose
    model probability falls below this is replaced by a fresh draw, when the draw differs. 0 = off."""
    edit_rounds: int = 0
    """Extra whole-canvas editing passes after the last mask is filled (with edit_threshold)."""
    guidance_scale: float = 0.0
    """Classifier-free guidance w: logits = cond + w·(cond − uncond), where the unconditional pass
    replaces the prompt (all fixed text) by [MASK]s. 0 = off; costs a second forward per step."""
    eos_penalty: float = 0.0
    """Subtract this from the end token's logit ([EOS], or end-of-turn in chat) at every position, so an
    end is committed only when the model is sure of it (a remedy for end-token flooding). 0 = off."""
    stop_at_eos: bool = False
    """Variable length: a row ends at its first [EOS] once every position before it is filled;
    positions after it become [PAD] and are never decoded."""
    speculative: bool = False
    """Self-speculative block decoding (TiDAR) for block models whose clean copy was trained as a
    next-token model (model.clean_causal, diffusion.clean_ar_weight > 0): each forward pass checks the
    drafted tokens with the clean copy and drafts the next block with the noisy one. The text follows the
    clean copy's next-token distribution exactly (temperature, top-k, top-p); the drafts decide only how
    many tokens a pass commits (1 to the block size). Order, steps and threshold do not apply."""
    drafts: int | None = None
    """Self-speculative decoding: tokens drafted per pass, 0 to the block size − 1; None = by the batch
    (`default_drafts`: on a CPU 2 for a single row, none for a batch or a BPE vocabulary, docs/block-diffusion.md).
    More drafts commit more tokens per pass but make every pass carry more rows; 0 = the clean copy writes
    alone, one token a pass. A speed setting only: the text is the same for any value."""
    seed: int = 0
    """Row i draws from its own generator seeded with seed + i, so a row's sample does not depend
    on what else is in the batch."""

    def validate(self) -> SamplerConfig:
        from dlm.diffusion.schedules import SCHEDULES

        choices = {"sampler": ORDERS, "block_context": ("canvas", "prefix"), "remask_schedule": ("cap", "rescale"),
                   "remask_by": ("confidence", "random"), "schedule": tuple(SCHEDULES)}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise DlmError(f"{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}")
        if self.steps < 1:
            raise DlmError(f"steps={self.steps} must be at least 1")
        if self.temperature < 0:
            raise DlmError(f"temperature={self.temperature} must be ≥ 0 (0 = greedy)")
        if self.top_k < 0 or not 0 < self.top_p <= 1:
            raise DlmError(f"top_k={self.top_k} must be ≥ 0 and top_p={self.top_p} in (0, 1]")
        if self.repetition_penalty <= 0:
            raise DlmError(f"repetition_penalty={self.repetition_penalty} must be > 0 (1 = off)")
        for name in ("threshold", "remask", "edit_threshold"):
            if not 0 <= getattr(self, name) <= 1:
                raise DlmError(f"{name}={getattr(self, name)} must be in [0, 1] (0 = off)")
        if self.block_length < 0 or self.edit_rounds < 0 or self.guidance_scale < 0 or self.eos_penalty < 0:
            raise DlmError("block_length, edit_rounds, guidance_scale and eos_penalty must be ≥ 0")
        if self.aligned_blocks and not self.block_length:
            raise DlmError("aligned_blocks needs semi-autoregressive blocks: set block_length")
        if self.kv_cache and not self.block_length:
            raise DlmError("kv_cache needs semi-autoregressive blocks: set block_length (e.g. 32)")
        if self.edit_rounds and not self.edit_threshold:
            raise DlmError("edit_rounds needs edit_threshold > 0 (the probability below which a token is redone)")
        if self.speculative:
            clashes = [name for name, on in (("remask", self.remask), ("edit_threshold", self.edit_threshold),
                                              ("guidance_scale", self.guidance_scale),
                                              ("repetition_penalty", self.repetition_penalty != 1.0)) if on]
            if clashes:
                raise DlmError(f"speculative decoding samples the clean copy's next-token distribution exactly; "
                               f"it does not combine with {', '.join(clashes)} (leave them at their defaults)")
        if self.drafts is not None and self.drafts < 0:
            raise DlmError(f"drafts={self.drafts} must be ≥ 0 (0 = none; leave it unset for the default)")
        if self.sampler == "ancestral" and self.threshold:
            raise DlmError("threshold decoding ranks positions by confidence; use it with sampler=confidence")
        return self

    @classmethod
    def from_kwargs(cls, **kwargs) -> SamplerConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise DlmError(f"unknown sampling option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**kwargs).validate()
