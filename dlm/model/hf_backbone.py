"""Any `transformers` masked LM (BERT, RoBERTa, DistilBERT, ModernBERT, …) as dlm's denoiser.

`model.backbone=hf:PATH` (a folder written by save_pretrained, or a Hub name already in the local
cache) builds `AutoModelForMaskedLM` from that config — with its pretrained weights
(`model.backbone_init=pretrained`, the default) or fresh ones (`config`) — and wraps it with the
call dlm's samplers and objectives make: ids (B, T) → logits (B, T, V). The model's own
tokenizer comes with it (dlm.tokenizers.hf). Its config is copied into the run's config, so a
trained run loads without the original folder. Needs `pip install 'dlm[hf]'`.

What such a backbone cannot do, and says so: the KV caches of the block samplers, time
conditioning, the causal AR objective, LoRA and FSDP (they need dlm's own Transformer).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from dlm.errors import DlmError
from dlm.model.config import ModelConfig


def import_transformers():
    try:
        import transformers
    except ImportError:
        raise DlmError("model.backbone=hf:… needs transformers, which is not installed; "
                       "pip install 'dlm[hf]'") from None
    return transformers


def backbone_path(cfg: ModelConfig) -> str:
    return cfg.backbone.removeprefix("hf:")


def read_backbone_config(cfg: ModelConfig) -> dict:
    """The backbone's Hugging Face config as a dict (from its folder, offline)."""
    transformers = import_transformers()
    try:
        config = transformers.AutoConfig.from_pretrained(backbone_path(cfg), local_files_only=True)
    except (OSError, ValueError) as e:
        raise DlmError(f"cannot read the backbone {cfg.backbone} ({str(e).splitlines()[0]}); pass a folder "
                       "written by save_pretrained (config.json, weights, tokenizer)") from None
    return config.to_dict()


class HFMaskedLM(nn.Module):
    def __init__(self, cfg: ModelConfig, pretrained: bool = False):
        super().__init__()
        transformers = import_transformers()
        self.cfg, self.fp32_logits = cfg, False
        if not cfg.backbone_config:
            raise DlmError("model.backbone_config is empty; it is filled from the backbone when a run starts")
        config = transformers.AutoConfig.for_model(**cfg.backbone_config)
        logging = transformers.utils.logging
        verbosity = logging.get_verbosity()
        logging.set_verbosity_error()  # the freshly initialised prediction head is expected, not news
        try:
            if pretrained:
                self.hf = transformers.AutoModelForMaskedLM.from_pretrained(backbone_path(cfg), config=config,
                                                                           local_files_only=True)
            else:
                self.hf = transformers.AutoModelForMaskedLM.from_config(config)
        except (OSError, ValueError) as e:
            raise DlmError(f"cannot build the masked LM {cfg.backbone} ({str(e).splitlines()[0]})") from None
        finally:
            logging.set_verbosity(verbosity)
        if self.hf.get_input_embeddings().num_embeddings != cfg.vocab_size:  # e.g. chat tokens added
            self.hf.resize_token_embeddings(cfg.vocab_size, mean_resizing=False)
        limit = getattr(config, "max_position_embeddings", None)
        if limit is not None and cfg.block_size > limit:
            raise DlmError(f"model.block_size={cfg.block_size} exceeds the backbone's {limit} positions; lower it")

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def new_cache(self, batch: int, max_len: int | None = None):
        raise DlmError("KV caches need dlm's own Transformer; sample this backbone without --kv-cache")

    def forward(self, idx: torch.Tensor, t: torch.Tensor | None = None, cache=None, return_hidden: bool = False,
                positions: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        if cache is not None:
            raise DlmError("KV caches need dlm's own Transformer; sample this backbone without --kv-cache")
        kwargs = {}
        if positions is not None:
            kwargs["position_ids"] = positions
        if attn_mask is not None:
            kwargs["attention_mask"] = attn_mask.expand(idx.shape[0], -1, -1, -1)  # (B, 1, Tq, Tk) bool
        out = self.hf(input_ids=idx, output_hidden_states=return_hidden, **kwargs)
        if return_hidden:
            return out.hidden_states[-1]
        return out.logits.float() if self.fp32_logits else out.logits


def build_model(cfg: ModelConfig, pretrained: bool = False) -> nn.Module:
    """dlm's Transformer, or the `transformers` backbone the config names (pretrained weights only
    when asked: a run that loads a checkpoint builds from the config alone)."""
    if not cfg.backbone:
        from dlm.model.transformer import Transformer

        return Transformer(cfg)
    return HFMaskedLM(cfg, pretrained=pretrained and cfg.backbone_init == "pretrained")
