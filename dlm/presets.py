"""Named run configurations. Each is a function returning a RunConfig; they derive from one another."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from dlm.config import RunConfig
from dlm.errors import DlmError


def shakespeare_char() -> RunConfig:
    """6 layers × 6 heads × 384 wide, block 256, batch 64 (nanoGPT/microDLM geometry, 10.7M params). GPU."""
    cfg = RunConfig(preset="shakespeare-char")
    cfg.model.n_layer, cfg.model.n_head, cfg.model.d_model, cfg.model.block_size = 6, 6, 384, 256
    cfg.train.batch_size, cfg.train.lr, cfg.train.max_steps, cfg.train.warmup_steps = 64, 1e-3, 5000, 100
    cfg.train.eval_interval, cfg.train.ckpt_interval = 250, 500
    return cfg


def shakespeare_char_cpu() -> RunConfig:
    """Sized to learn real words within 10 minutes on 2 CPU cores (bf16 + torch.compile)."""
    cfg = shakespeare_char()
    cfg.preset = "shakespeare-char-cpu"
    cfg.model.n_layer, cfg.model.n_head, cfg.model.d_model, cfg.model.block_size = 4, 4, 256, 256
    # Tuned on 150 s runs at block 128 (val NELBO after 150 s: batch 64 / lr 2e-3 2.42, batch 32
    # 2.23, batch 16 2.23, batch 32 / lr 3e-3 2.21): small batches win on a short budget. The
    # context is 256 so that 256-character samples fit; batch 16 keeps 4,096 tokens a step.
    cfg.train.batch_size, cfg.train.lr, cfg.train.warmup_steps = 16, 5e-3, 100
    # docs/study.md, "The training weighting (4 × 256, 3.4M tokens, bf16)": equal tokens at this size,
    # val NELBO nats/char: ELBO weight 2.240, flat 2.187, ELBO weight clipped at 5 2.139 (lr 3e-3) /
    # 2.139 (5e-3); the bound is still what is reported.
    cfg.diffusion.weighting, cfg.diffusion.weight_cap = "clipped", 5.0
    # docs/study.md, "The optimizer: Muon (equal tokens)", 3 × 192: Muon on the hidden matrices lowers
    # the NELBO by 0.20 and the AR twin's NLL by 0.06, for ~9 % fewer tokens per second on a CPU.
    cfg.train.optimizer = "muon"
    cfg.train.max_steps, cfg.train.max_time = 1_000_000, 600.0
    cfg.train.eval_interval, cfg.train.ckpt_interval, cfg.train.eval_batches = 500, 500, 8
    # docs/block-diffusion.md: in the same 10 minutes, blocks of 4 reach NELBO 1.647 against MDLM's
    # 1.777, write 91 % real words against 72 % and sample 3× faster at batch 1; `--objective mdlm`
    # trains MDLM (the block size is then dropped), `--objective ar` the twin.
    cfg.train.objective, cfg.diffusion.block_size = "bd3", 4
    # Its clean copy read token-causally and trained as a next-token model too: 1.630 against 1.673
    # the same day, at equal time (docs/block-diffusion.md); other objectives drop both settings.
    cfg.model.clean_causal, cfg.diffusion.clean_ar_weight = True, 1.0
    # Its noisy half trained on the bound itself: k of each block's 4 tokens masked, k uniform, weight 4 / k,
    # an unbiased estimate of the exact block bound. In three pairs of 10-minute runs on one machine it came
    # out 0.003–0.005 below the clipped noise range each time (docs/block-diffusion-notebook.md, 2026-12-06).
    cfg.diffusion.block_noise = "count"
    return cfg


def owt_124m() -> RunConfig:
    """12 layers × 12 heads × 768, context 1024, 50,257-token BPE, tied embeddings (GPT-2 small, ~124M)."""
    cfg = RunConfig(preset="owt-124m")
    m = cfg.model
    m.n_layer, m.n_head, m.d_model, m.block_size, m.tie_weights, m.vocab_size = 12, 12, 768, 1024, True, 50257
    cfg.data.source, cfg.data.tokenizer, cfg.data.vocab_size = "hf:Skylion007/openwebtext", "bpe", 50257
    cfg.data.val_fraction = 0.0005
    t = cfg.train
    t.batch_size, t.grad_accum, t.lr, t.warmup_steps, t.max_steps = 512, 16, 6e-4, 2500, 200_000
    t.eval_interval, t.ckpt_interval, t.eval_batches, t.ema_decay = 2000, 2000, 50, 0.9999
    return cfg


def fineweb_124m() -> RunConfig:
    """owt-124m's model and recipe on FineWeb-Edu (sample-10BT)."""
    cfg = owt_124m()
    cfg.preset = "fineweb-124m"
    cfg.data.source = "hf:HuggingFaceFW/fineweb-edu:sample-10BT"
    return cfg


def joey_170m() -> RunConfig:
    """12 layers × 16 heads × 1024, context 256, 16K BPE, tied embeddings (~168M)."""
    cfg = owt_124m()
    cfg.preset = "joey-170m"
    m = cfg.model
    m.n_layer, m.n_head, m.d_model, m.block_size, m.vocab_size = 12, 16, 1024, 256, 16384
    cfg.data.vocab_size = 16384
    cfg.train.batch_size, cfg.train.grad_accum = 256, 4
    return cfg


def tiny() -> RunConfig:
    """Seconds-long runs for tests and smoke checks: 2 layers × 64 wide, block 32."""
    cfg = RunConfig(preset="tiny")
    cfg.model.n_layer, cfg.model.n_head, cfg.model.d_model, cfg.model.block_size = 2, 2, 64, 32
    cfg.train.batch_size, cfg.train.lr, cfg.train.warmup_steps, cfg.train.max_steps = 16, 3e-3, 10, 200
    cfg.train.eval_interval, cfg.train.eval_batches, cfg.train.ckpt_interval = 100, 4, 100
    cfg.train.log_interval, cfg.train.compile = 10, "no"
    return cfg


def adapt() -> RunConfig:
    """`dlm adapt`: a pretrained causal LM (model.backbone) made a diffusion model; 30 CPU minutes."""
    cfg = RunConfig(preset="adapt")
    cfg.model.block_size = 128  # tokens of the model's own BPE: ~500 characters of English
    t = cfg.train
    # A pretrained network fine-tunes with AdamW at a small rate, without weight decay or EMA (an
    # average over a few hundred steps would lag behind them); compiling it costs minutes on a CPU.
    t.optimizer, t.lr, t.weight_decay, t.warmup_steps, t.min_lr_ratio = "adamw", 1e-4, 0.0, 20, 0.1
    t.batch_size, t.ema_decay, t.compile = 8, 0.0, "no"
    t.max_steps, t.max_time = 1_000_000, 1800.0
    t.eval_interval, t.ckpt_interval, t.eval_batches, t.keep_last, t.log_interval = 50, 50, 4, 1, 5
    t.attention_anneal_steps = 100  # causal → bidirectional over the first 100 steps (DiffuLLaMA)
    return cfg


PRESETS: dict[str, Callable[[], RunConfig]] = {
    "shakespeare-char": shakespeare_char,
    "shakespeare-char-cpu": shakespeare_char_cpu,
    "owt-124m": owt_124m,
    "fineweb-124m": fineweb_124m,
    "joey-170m": joey_170m,
    "tiny": tiny,
    "adapt": adapt,
}


def get_preset(name: str) -> RunConfig:
    """A named preset, or a config saved as JSON (a sweep's best.json, `dlm presets --show NAME --json`)."""
    if name.endswith(".json"):
        return preset_from_file(Path(name))
    if name not in PRESETS:
        raise DlmError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}, or pass a config JSON file")
    return PRESETS[name]()


def preset_from_file(path: Path) -> RunConfig:
    try:
        return RunConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, AttributeError) as e:
        raise DlmError(f"cannot read the preset file {path} ({e}); pass a config JSON written by dlm") from None
