"""Run configuration: typed dataclasses, one loader, strict keys.

A run config is built from a preset (`dlm.presets`), then `key=value` overrides. A key is either
dotted (`train.lr=3e-4`) or a bare field name that is unique across sections (`lr=3e-4`).
Unknown keys and values of the wrong type are one-line errors. The resolved config is written
to the run folder as config.json and read back from it.
"""

from __future__ import annotations

import copy
import types
import typing
from dataclasses import asdict, dataclass, field, fields

from dlm.data.config import DataConfig
from dlm.errors import DlmError
from dlm.model.config import ModelConfig


@dataclass
class DiffusionConfig:
    schedule: str = "linear"
    """Noise schedule for training: linear, cosine, loglinear, sqrt, clipped-cosine, sigmoid."""
    antithetic: bool = True
    """Stratify the per-sequence noise levels of a batch (lower-variance, still unbiased)."""
    edit_prob: float = 0.0
    """Training only: after masking, replace each visible token with this probability by a uniform
    real token, and add the edit term (cross-entropy at every visible position) to the loss, so the
    model learns to fix wrong visible tokens (Seed Diffusion). > 0 makes the training loss no longer
    the NELBO (`dlm eval` still reports it). In [0, 1); 0 = off."""
    edit_weight: float = 1.0
    """Training only: weight of the edit term against the masked-token term (≥ 0; used when edit_prob > 0)."""
    prompt_prob: float = 0.0
    """Training only: the fraction of sequences whose prefix (uniform length in [1, L/2]) is a prompt:
    never masked, corrupted or scored; the rest are the unconditional branch of classifier-free
    guidance. > 0 makes the training loss a conditional bound, not the NELBO. In [0, 1]; 0 = off."""
    weighting: str = "elbo"
    """Training loss weight of a masked token at noise level t: elbo (−α'/(1−α), the NELBO: a bound),
    flat (1: a plain masked cross-entropy, not a bound) or clipped (the ELBO weight capped at weight_cap,
    not a bound)."""
    weight_cap: float = 5.0
    """With weighting=clipped: the largest weight (linear schedule: t below 1/weight_cap weighs as there)."""
    masking: str = "uniform"
    """Which tokens are masked: uniform (each with probability 1 − α(t), the NELBO's) or entropy
    (microDLM: that probability × clamp(2 − e/mean e, 0.5, 1.5), e a token's entropy under the AR
    twin in diffusion.entropy_run; a training objective, not a bound)."""
    entropy_run: str = ""
    """With masking=entropy: the AR run (trained on the same corpus) whose predictive entropies weight the masking."""
    block_size: int = 0
    """With train.objective=bd3: tokens per block of block diffusion (BD3-LM), a divisor of the context.
    Blocks are generated left to right with an exact KV cache, each denoised in parallel; 1 is the AR
    limit, the context is MDLM. 0 = not set."""
    t_range: str = "auto"
    """With train.objective=bd3: 'lo,hi', draw each block's noise level from U[lo, hi] in training (the
    paper's clipped schedules, a lower-variance loss); auto = 0.45,0.95, measured best of those tried
    (docs/block-diffusion.md). Only 0,1 keeps the training loss a bound; dlm eval always integrates
    over [0, 1]."""
    block_noise: str = "t"
    """With train.objective=bd3: how a training block is masked. t: a noise level per block from t_range, each
    token masked with probability 1 − α(t) and weighted by the schedule; count: the number of masked tokens
    drawn uniformly from 1 … B, a random set of that many, each weighted B / k — an unbiased estimate of the
    exact block bound (the sum over mask patterns that dlm eval computes), so the training loss is the bound,
    with weights never above B (t_range and weighting are then unused)."""
    noisy_copies: int = 1
    """With train.objective=bd3: noisy copies of each training window read beside its one clean copy, each
    with its own noise (≥ 1). The clean copy is half of a one-copy step's work; k copies share it, so a
    step scores k draws of the bound for the work of k + 1 copies (the loss is their mean, still the bound)."""
    clean_ar_weight: float = 0.0
    """With train.objective=bd3 and model.clean_causal=true: add this weight × the clean copy's next-token
    NLL to the training loss (the clean copy is an AR model of the window; a dense signal the noisy blocks
    read through its keys and values). > 0 makes the training loss no longer the bound; dlm eval's is.
    Other objectives ignore it (their config.json says 0)."""


@dataclass
class TrainConfig:
    objective: str = "mdlm"
    """'mdlm' (masked diffusion, bidirectional), 'bd3' (block diffusion: blocks of diffusion.block_size
    tokens, left to right) or 'ar' (the causal twin, next-token loss)."""
    batch_size: int = 64
    """Sequences per optimizer step (split into grad_accum micro-batches)."""
    grad_accum: int = 1
    """Micro-batches per step: the same update as the whole batch, in 1/grad_accum of the memory."""
    lr: float = 1e-3
    """Peak learning rate (reached after warmup_steps, then cosine decay)."""
    optimizer: str = "adamw"
    """'adamw', or 'muon' (orthogonalised momentum on the hidden matrices, AdamW on the rest).

    With muon one learning rate and weight decay serve both halves: Muon's step is rescaled to the
    size of an AdamW update. Under FSDP only adamw."""
    min_lr_ratio: float = 0.1
    """Cosine decay ends at lr × min_lr_ratio."""
    warmup_steps: int = 100
    """Steps of linear warmup from 0 to lr."""
    max_steps: int = 5000
    """Stop (after saving) after this many optimizer steps."""
    max_time: float = 0.0
    """Stop (after saving) when this many seconds have passed; 0 = no limit."""
    lr_decay_time: bool = True
    """With max_time, decay the LR over the time budget instead of over max_steps."""
    weight_decay: float = 0.1
    """AdamW's decoupled weight decay, applied to matrices only (not norms or biases)."""
    attention_anneal_steps: int = 0
    """A causal-LM backbone (dlm adapt): open its attention to later positions gradually over this many
    steps, from causal (as pretrained) to bidirectional (DiffuLLaMA's attention-mask annealing); 0 =
    bidirectional from the first step. No effect on other models."""
    gradient_checkpointing: bool = False
    """Recompute each layer's activations in the backward pass instead of keeping them: less memory,
    about a third more compute. For `transformers` backbones (the large networks of dlm adapt)."""
    ar_input_mask: float = 0.0
    """AR twin and block diffusion (bd3): in training, replace this share of the input tokens by [MASK]
    (targets unchanged); for bd3, of the clean copy's tokens, which later blocks and the next-token rows read.

    A regulariser, word dropout for the causal model: it must predict each next token from a context
    with holes. The training loss is then not the exact NLL (nor the block NELBO); validation and
    `dlm eval` read clean inputs. 0 = off."""
    beta1: float = 0.9
    """AdamW's first-moment decay."""
    beta2: float = 0.95
    """AdamW's second-moment decay."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value."""
    eval_interval: int = 250
    """Steps between quick validation estimates (val_loss in the log)."""
    eval_batches: int = 20
    """Batches per quick validation estimate (use `dlm eval` for figures with error bars)."""
    log_interval: int = 10
    """Steps between records in RUN/log.jsonl."""
    ckpt_interval: int = 500
    """Steps between checkpoints (one is also saved whenever the run stops)."""
    keep_last: int = 2
    """Checkpoints kept in RUN/checkpoints (older ones are deleted)."""
    keep_best: bool = True
    """Also keep the checkpoint of the lowest quick validation loss (one is saved when a validation improves
    on it; RUN/best.json names it, `--ckpt RUN/best` reads it): a run that overfits keeps its best weights,
    as Hugging Face's load_best_model_at_end does."""
    ema_decay: float = 0.999
    """EMA of the weights (0 = off); the average is used for validation, eval and sampling. Its warm-up,
    min(decay, (1 + t)/(10 + t)) at update t, reaches 0.999 only after ~9,000 updates: a shorter run
    averages over roughly its last tenth, whatever this value."""
    max_bad_steps: int = 10
    """Non-finite loss or gradients skip the step; this many in a row stops the run."""
    fsdp: bool = False
    """Under torchrun, shard parameters, gradients and optimizer state with FSDP2 instead of DDP."""
    tensorboard: bool = True
    """Also log to RUN/tensorboard when the tensorboard package is installed."""
    wandb: bool = False
    """Also log to Weights & Biases (a no-op with a message when wandb is not installed)."""
    seed: int = 1337
    """Seeds the initial weights, the batch order and the masking noise."""
    dtype: str = "auto"
    """'auto' (bf16 on CUDA and on CPUs with bf16 units, else fp32; a plain `dlm train` on such a CPU times both
    and trains in the faster, dlm.sizing), 'bf16' or 'fp32'."""
    compile: str = "auto"
    """torch.compile the model: 'auto' (when a C compiler is present), 'yes' or 'no'."""
    device: str = "auto"
    """'auto' (cuda if available), 'cpu' or 'cuda'."""
    auto_size: str = ""
    """Set by `dlm train` without --preset on a CPU: what the budget probe measured and which size it chose."""


@dataclass
class FinetuneConfig:
    base: str = ""
    """The run this one starts from: its newest checkpoint's weights (EMA when saved), vocabulary grown
    for any new tokens; '' = trained from scratch."""
    chat: bool = False
    """Conversations (data.source: JSONL messages, a play script, hf:NAME) with a response-only loss."""
    fill: str = "eos"
    """What follows a reply's end-of-turn token on the canvas: pad, eos or block-eos (dlm.data.chat_loader).
    eos gave reply lengths nearest the references' in bench/chat.py (docs/chat.md)."""
    pad_weight: float = 0.1
    """With fill=pad: loss weight of the [PAD] filler (0: masked but unscored)."""
    fill_block: int = 32
    """With fill=block-eos: the block length, counted from the reply's first token."""


@dataclass
class RunConfig:
    preset: str = ""
    """The preset this config started from (informational)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RunConfig:
        cfg = cls()
        for section, values in data.items():
            if section == "preset":
                cfg.preset = values
                continue
            if section not in SECTIONS:
                raise DlmError(f"config has an unknown section {section!r}; known: {', '.join(SECTIONS)}")
            sub = getattr(cfg, section)
            for key, value in values.items():
                key = RENAMED.get(f"{section}.{key}", f"{section}.{key}").split(".", 1)[1]
                set_field(sub, key, value, f"{section}.{key}")
        return cfg

    def validate(self) -> None:
        try:
            self.model.validate()
        except ValueError as e:
            raise DlmError(f"bad model config: {e}") from None
        choices = {"train.objective": ("mdlm", "bd3", "ar"), "train.optimizer": ("adamw", "muon"),
                   "train.dtype": ("auto", "bf16", "fp32"),
                   "train.compile": ("auto", "yes", "no"), "train.device": ("auto", "cpu", "cuda"),
                   "data.tokenizer": ("char", "bpe")}
        for key, allowed in choices.items():
            section, name = key.split(".")
            value = getattr(getattr(self, section), name)
            if value not in allowed:
                raise DlmError(f"{key}={value!r} is not one of {', '.join(allowed)}")
        from dlm.diffusion.schedules import SCHEDULES

        if self.diffusion.schedule not in SCHEDULES:
            raise DlmError(f"diffusion.schedule={self.diffusion.schedule!r} is not one of {', '.join(SCHEDULES)}")
        t = self.train
        if self.model.time_conditioning and t.objective == "ar":
            raise DlmError("model.time_conditioning=true is for diffusion runs; the AR twin has no noise level")
        d = self.diffusion
        if not 0 <= d.edit_prob < 1:
            raise DlmError(f"diffusion.edit_prob={d.edit_prob} must be in [0, 1) (0 turns edit corruption off)")
        if not d.edit_weight >= 0:
            raise DlmError(f"diffusion.edit_weight={d.edit_weight} must be ≥ 0")
        if not 0 <= d.prompt_prob <= 1:
            raise DlmError(f"diffusion.prompt_prob={d.prompt_prob} must be in [0, 1] (0 turns prompts off)")
        if d.weighting not in ("elbo", "flat", "clipped"):
            raise DlmError(f"diffusion.weighting={d.weighting!r} is not one of elbo, flat, clipped")
        if not d.weight_cap >= 1:
            raise DlmError(f"diffusion.weight_cap={d.weight_cap} must be ≥ 1 (1 is the flat weighting)")
        if d.masking not in ("uniform", "entropy"):
            raise DlmError(f"diffusion.masking={d.masking!r} is not one of uniform, entropy")
        if d.masking == "entropy" and not d.entropy_run and t.objective != "ar":
            raise DlmError("diffusion.masking=entropy needs diffusion.entropy_run=AR_RUN (an AR twin trained on "
                           "the same corpus, whose token entropies weight the masking)")
        if t.objective == "ar" and (d.edit_prob > 0 or d.prompt_prob > 0):
            raise DlmError("diffusion.edit_prob and diffusion.prompt_prob are for diffusion runs; "
                           "set them to 0 for train.objective=ar")
        if t.objective == "bd3":
            if d.block_size < 1 or self.model.block_size % d.block_size:
                raise DlmError(f"diffusion.block_size={d.block_size} must divide the context "
                               f"model.block_size={self.model.block_size}: set diffusion.block_size=B "
                               "(e.g. 4) with train.objective=bd3")
            if self.model.time_conditioning or d.edit_prob or d.prompt_prob or d.masking != "uniform":
                raise DlmError("train.objective=bd3 works without time conditioning, edit corruption, prompts or "
                               "entropy masking: drop those, or use --objective mdlm")
        parse_t_range(d.t_range)
        if d.block_noise not in ("t", "count"):
            raise DlmError(f"diffusion.block_noise={d.block_noise!r} is not one of t, count")
        if d.clean_ar_weight < 0 or (d.clean_ar_weight > 0 and t.objective == "bd3" and not self.model.clean_causal):
            raise DlmError(f"diffusion.clean_ar_weight={d.clean_ar_weight}: it is ≥ 0, and above 0 needs "
                           "model.clean_causal=true (a block-causal clean copy shows each token its successor)")
        if d.noisy_copies < 1 or (d.noisy_copies > 1 and t.objective != "bd3"):
            raise DlmError(f"diffusion.noisy_copies={d.noisy_copies}: it is ≥ 1, and above 1 only with "
                           "train.objective=bd3 (block diffusion's shared clean copy)")
        f = self.finetune
        if f.fill not in ("pad", "eos", "block-eos"):
            raise DlmError(f"finetune.fill={f.fill!r} is not one of pad, eos, block-eos")
        if f.chat and not f.base and not self.model.backbone:
            raise DlmError("finetune.chat=true needs finetune.base=RUN (a pre-trained run) or a pretrained "
                           "backbone; use dlm finetune --base RUN --chat, or dlm adapt MODEL --chat")
        if not 0 <= f.pad_weight <= 1 or f.fill_block < 1:
            raise DlmError(f"finetune.pad_weight={f.pad_weight} must be in [0, 1] and finetune.fill_block ≥ 1")
        if self.model.backbone and (t.objective == "ar" or t.fsdp or d.masking != "uniform"):
            raise DlmError("model.backbone=hf:… is a denoiser: train it with train.objective=mdlm, "
                           "without FSDP or entropy masking")
        if t.attention_anneal_steps < 0:
            raise DlmError(f"train.attention_anneal_steps={t.attention_anneal_steps} must be ≥ 0 (0 = bidirectional "
                           "from the first step)")
        if t.optimizer == "muon" and t.fsdp:
            raise DlmError("train.optimizer=muon does not shard under FSDP yet; use train.optimizer=adamw with "
                           "train.fsdp=true, or DDP (train.fsdp=false) with Muon")
        if self.model.lora_rank < 0:
            raise DlmError(f"model.lora_rank={self.model.lora_rank} must be ≥ 0 (0 = full fine-tuning)")
        if t.batch_size < 1 or t.grad_accum < 1 or t.batch_size % t.grad_accum:
            raise DlmError(f"train.batch_size={t.batch_size} must be a positive multiple of "
                           f"train.grad_accum={t.grad_accum}")
        if not 0 <= t.ar_input_mask < 1:
            raise DlmError(f"train.ar_input_mask={t.ar_input_mask} must be in [0, 1) (0 = off)")
        if t.ar_input_mask > 0 and t.objective not in ("ar", "bd3"):
            raise DlmError("train.ar_input_mask is for the AR twin (train.objective=ar) and a block model's clean "
                           "copy (bd3); an MDLM run masks its inputs already")
        if not 0 <= t.ema_decay < 1:
            raise DlmError(f"train.ema_decay={t.ema_decay} must be in [0, 1) (0 turns EMA off)")
        if t.lr <= 0 or t.max_steps < 1 or t.max_time < 0:
            raise DlmError("train.lr and train.max_steps must be positive and train.max_time ≥ 0")
        if not 0 < self.data.val_fraction < 1:
            raise DlmError(f"data.val_fraction={self.data.val_fraction} must be between 0 and 1")


T_RANGE_AUTO = (0.45, 0.95)  # docs/block-diffusion.md: blocks of 4, 10 minutes: NELBO 1.664 against 1.723 on [0, 1]


def parse_t_range(text: str) -> tuple[float, float]:
    """'lo,hi' → (lo, hi), 0 ≤ lo < hi ≤ 1 (diffusion.t_range); 'auto' → T_RANGE_AUTO."""
    if text == "auto":
        return T_RANGE_AUTO
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise DlmError(f"diffusion.t_range={text!r}: write lo,hi, e.g. 0.3,0.8 (0,1 keeps the loss a bound)") from None
    if not 0 <= lo < hi <= 1:
        raise DlmError(f"diffusion.t_range={text!r} must have 0 ≤ lo < hi ≤ 1")
    return lo, hi


SECTIONS = ("model", "data", "diffusion", "train", "finetune")
# Fields renamed since runs were first written: config.json files of older runs still load.
# Old name → new dotted name; both a config.json key and a bare or dotted override.
RENAMED = {"data.data": "data.source", "data": "data.source"}
# Set by the trainer from the tokenizer and the objective; a bare key never means these.
DERIVED = ("model.vocab_size", "model.causal")


def _parse(text: str, typ, key: str):
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if text.lower() in ("none", "null"):
            return None
        return _parse(text, args[0], key)
    if typ is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise DlmError(f"{key}={text!r}: expected true or false")
    if typ in (int, float):
        try:
            number = float(text)
        except ValueError:
            raise DlmError(f"{key}={text!r}: expected {typ.__name__}") from None
        if typ is int:
            if not number.is_integer():
                raise DlmError(f"{key}={text!r}: expected an integer")
            return int(number)
        return number
    return text


def set_field(obj, name: str, value, key: str) -> None:
    hints = typing.get_type_hints(type(obj))
    if name not in hints:
        known = ", ".join(f.name for f in fields(obj))
        raise DlmError(f"unknown config key {key!r}; {type(obj).__name__} has: {known}")
    typ = hints[name]
    if isinstance(value, str) and typ is not str:
        value = _parse(value, typ, key)
    elif typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    elif typ in (int, float, bool, str) and not isinstance(value, typ):
        raise DlmError(f"{key}={value!r}: expected {typ.__name__}")
    setattr(obj, name, value)


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """A copy of cfg with the `key=value` strings applied (cfg itself is not changed)."""
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        section, name, value = parse_override(cfg, item)
        set_field(getattr(cfg, section), name, value, f"{section}.{name}")
    return cfg


def parse_override(cfg: RunConfig, item: str) -> tuple[str, str, str]:
    """'lr=3e-4' → ('train', 'lr', '3e-4'): the section and field a `key=value` string sets."""
    if "=" not in item:
        raise DlmError(f"override {item!r} is not of the form key=value (e.g. train.lr=3e-4)")
    key, value = item.split("=", 1)
    key = key.strip().lstrip("-").replace("-", "_")
    key = RENAMED.get(key, key)
    if "." in key:
        section, name = key.split(".", 1)
        if section not in SECTIONS:
            raise DlmError(f"unknown config section {section!r} in {item!r}; known: {', '.join(SECTIONS)}")
        return section, name, value
    owners = [s for s in SECTIONS if name_in(getattr(cfg, s), key) and f"{s}.{key}" not in DERIVED]
    if not owners:
        raise DlmError(f"unknown config key {key!r}; `dlm presets --show NAME` lists every key")
    if len(owners) > 1:
        raise DlmError(f"config key {key!r} is ambiguous; write one of " + ", ".join(f"{s}.{key}" for s in owners))
    return owners[0], key, value


def name_in(obj, name: str) -> bool:
    return any(f.name == name for f in fields(obj))
