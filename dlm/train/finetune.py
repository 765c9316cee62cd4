"""Fine-tuning from a trained run: its config as the starting point, its weights as the start.

`finetune_config` turns a base run into the config of a fine-tune (the base's model geometry and
objective, a gentler learning rate, the new data); the trainer then starts the model from
`load_base_weights` instead of a random initialisation — with the vocabulary grown for new tokens
(chat roles, end of turn) and, with model.lora_rank, adapters on frozen weights. Everything else
(checkpoints, exact resume, logging, signals) is the trainer's, unchanged.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from safetensors.torch import load_file

from dlm.config import RunConfig
from dlm.errors import DlmError
from dlm.model.lora import base_keys_to_lora
from dlm.model.resize import grow_vocabulary
from dlm.run_folder import locate_checkpoint


def finetune_config(base: str | Path, data: str, chat: bool) -> RunConfig:
    """The base run's config, retargeted: its model and objective, the new data, a fine-tuning recipe."""
    run, _ = locate_checkpoint(base)
    cfg = copy.deepcopy(run.read_config())
    cfg.preset = f"finetune:{run.path.name}"
    cfg.finetune.base, cfg.finetune.chat, cfg.data.source = str(base), chat, data
    t = cfg.train
    # A gentle recipe: a tenth of a typical pre-training peak, short warmup, fixed step count.
    t.lr, t.warmup_steps, t.max_steps, t.max_time = min(t.lr, 3e-4), 50, 2000, 0.0
    # AdamW whatever the base trained with: the chat measurements (docs/chat.md) used it, and LoRA
    # trains no full hidden matrix for Muon to take.
    t.optimizer = "adamw"
    t.eval_interval, t.ckpt_interval = 250, 500
    return cfg


def load_base_weights(model: torch.nn.Module, base: str | Path) -> str:
    """Put the base run's newest weights (EMA when saved) into `model`; returns the file used."""
    _, ckpt = locate_checkpoint(base)
    name = "ema.safetensors" if (ckpt / "ema.safetensors").is_file() else "model.safetensors"
    state = load_file(str(ckpt / name), device=str(next(model.parameters()).device))
    vocab = model.cfg.vocab_size
    try:
        state = grow_vocabulary(state, vocab)
    except ValueError as e:
        raise DlmError(f"the base run {base} does not fit this model ({e}); "
                       "fine-tune with the base's tokenizer") from None
    keys = set(model.state_dict())
    state = base_keys_to_lora(state, keys)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("rope_") and "lora_" not in k]
    if missing or unexpected:
        raise DlmError(f"the base run {base} has another model geometry (missing {missing[:3]}, unexpected "
                       f"{unexpected[:3]}); fine-tune with the base's model settings")
    return str(ckpt / name)
