"""Any `transformers` masked LM (BERT, RoBERTa, DistilBERT, ModernBERT, …) or causal LM (GPT-2,
LLaMA/SmolLM2, Qwen2) as dlm's denoiser.

`model.backbone=hf:PATH` (a folder written by save_pretrained, or a Hub name already in the local
cache) builds the model from that config — with its pretrained weights
(`model.backbone_init=pretrained`, the default) or fresh ones (`config`) — and wraps it with the
call dlm's samplers and objectives make: ids (B, T) → logits (B, T, V). The model's own
tokenizer comes with it (dlm.tokenizers.hf). Its config is copied into the run's config, so a
trained run loads without the original folder. Needs `pip install 'dlm[hf]'`.

A causal LM becomes a denoiser the way DiffuGPT/DiffuLLaMA (Gong et al., ICLR 2025) adapt one
(HFCausalDenoiser): its attention is opened to both sides, gradually at the start of training
(train.attention_anneal_steps), and it keeps the shift it was pretrained with (the hidden state at
i − 1 predicts token i), so its pretrained head is reused rather than relearnt. `dlm adapt` is the
command that does it.

A causal LM also trains as a block-diffusion model (train.objective=bd3, `dlm adapt --block-size B`;
Fast-dLLM v2's recipe): attention block-causal as in dlm.objectives.block_diffusion, the shift kept
across blocks (HFCausalDenoiser.block_diffusion_logits).

What such a backbone cannot do, and says so: the KV caches of the block samplers (a block model
samples with its prefix recomputed each step), time conditioning, the causal AR objective and FSDP
(they need dlm's own Transformer); LoRA and block diffusion work on causal LMs only.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from dlm.errors import DlmError
from dlm.model.block_attention import BlockDiffusionLayout, block_diffusion_mask
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


# The causal LM families dlm adapts, each tested with a tiny random model (tests/test_pretrained.py).
CAUSAL_FAMILIES = {"gpt2": "GPT-2", "llama": "LLaMA (SmolLM2, TinyLlama)", "qwen2": "Qwen2/Qwen2.5"}


def families() -> str:
    return ", ".join(f"{name} ({label})" for name, label in CAUSAL_FAMILIES.items())


def is_causal_lm(backbone_config: dict) -> bool:
    """A causal LM dlm adapts; an unsupported causal LM is a one-line error naming those it adapts."""
    model_type = backbone_config.get("model_type", "")
    if model_type in CAUSAL_FAMILIES:
        return True
    architectures = backbone_config.get("architectures") or []
    if backbone_config.get("is_decoder") or any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        raise DlmError(f"the causal LM family {model_type or architectures[0]!r} is not supported yet; "
                       f"dlm adapts {families()}")
    return False


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
            raise DlmError(f"cannot build the masked LM {cfg.backbone} ({str(e).splitlines()[0]}); dlm takes "
                           f"masked LMs and the causal LMs of {families()}") from None
        finally:
            logging.set_verbosity(verbosity)
        if cfg.lora_rank:
            raise DlmError("LoRA works on dlm's Transformer and on causal-LM backbones, not on a masked LM; "
                           "drop model.lora_rank")
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


class HFCausalDenoiser(nn.Module):
    """A `transformers` causal LM read as a denoiser: bidirectional attention, the pretrained shift.

    Attention: every query sees every key once `future_visible` is 1 (always, outside training);
    below 1, each (query, later key) pair is opened with that probability, drawn afresh each
    forward — DiffuLLaMA's attention-mask annealing, which the trainer raises from 0 (the causal
    model as pretrained) to 1 over train.attention_anneal_steps.

    Shift: the logits at i come from the hidden state at i − 1 (what the LM was trained to make
    predict token i); position 0 has no predecessor and reads its own state.
    """

    def __init__(self, cfg: ModelConfig, pretrained: bool = False):
        super().__init__()
        transformers = import_transformers()
        self.cfg, self.fp32_logits = cfg, False
        self.future_visible = 1.0
        """Share of (query, later key) pairs open in training; set by the trainer while it anneals."""
        if not cfg.backbone_config:
            raise DlmError("model.backbone_config is empty; it is filled from the backbone when a run starts")
        config = transformers.AutoConfig.for_model(**cfg.backbone_config)
        config.use_cache = False
        logging = transformers.utils.logging
        verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
        logging.set_verbosity_error()
        logging.disable_progress_bar()  # dlm says what it loads; the per-tensor bar is noise
        try:  # SDPA takes the boolean (B, 1, T, T) masks this wrapper builds, in every supported family
            if pretrained:
                self.hf = transformers.AutoModelForCausalLM.from_pretrained(
                    backbone_path(cfg), config=config, local_files_only=True, attn_implementation="sdpa")
            else:
                self.hf = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
        except (OSError, ValueError) as e:
            raise DlmError(f"cannot build the causal LM {cfg.backbone} ({str(e).splitlines()[0]})") from None
        finally:
            logging.set_verbosity(verbosity)
            if bars:
                logging.enable_progress_bar()
        self.pretrained_rows = self.hf.get_input_embeddings().num_embeddings
        if self.pretrained_rows != cfg.vocab_size:  # [MASK], [PAD] and chat tokens added
            self.hf.resize_token_embeddings(cfg.vocab_size, mean_resizing=False)
        limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        if limit is not None and cfg.block_size > limit:
            raise DlmError(f"model.block_size={cfg.block_size} exceeds the backbone's {limit} positions; lower it")
        if cfg.lora_rank:
            from dlm.model.lora import add_lora_to_backbone

            add_lora_to_backbone(self.hf, cfg.lora_rank, cfg.lora_alpha or cfg.lora_rank)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def new_cache(self, batch: int, max_len: int | None = None):
        raise DlmError("KV caches need dlm's own Transformer; sample this backbone without --kv-cache")

    @torch.no_grad()
    def init_token_rows(self, ids: list[int]) -> None:
        """Start the rows of tokens dlm added ([MASK], [PAD], chat markers) at the mean of the
        pretrained rows: a neutral input, and (in an untied head) an average logit."""
        tables = [self.hf.get_input_embeddings().weight]
        head = self.hf.get_output_embeddings()
        if head is not None and head.weight is not tables[0]:
            tables.append(head.weight)
        rows = min([self.pretrained_rows, *ids])  # rows past the tokenizer's own ids are padding
        for table in tables:
            table[ids] = table[:rows].float().mean(0).to(table.dtype)

    def gradient_checkpointing(self) -> None:
        kwargs = {"use_reentrant": False}
        if hasattr(self.hf, "activation_checkpointing_enable"):  # transformers ≥ 5.x's name for it
            self.hf.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            self.hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    def block_diffusion_logits(self, z: torch.Tensor, x: torch.Tensor, block: int) -> torch.Tensor:
        """(B, L, V) logits of the noisy copy z given the clean copy x (block diffusion's vectorised
        form, one forward over [z | x] under dlm.objectives.block_diffusion's mask; forward routes
        here when its attn_mask is a BlockDiffusionLayout).

        The shift, kept across blocks: noisy token i reads the noisy state at i − 1 inside its block,
        and the first token of a block reads the clean state at i − 1 — the last token of the clean
        block before, which has seen exactly the clean blocks before it. That is the state the
        sampler gives it (the prefix, block-causal, then the block). While attention anneals, the
        pairs inside a noisy block open as in forward; the clean prefix is block-causal throughout.
        """
        B, L = x.shape
        mask = block_diffusion_mask(L, block, x.device)
        if self.training and self.future_visible < 1:
            mask[:L, :L] &= self._visibility(L, x.device)
        positions = torch.arange(L, device=x.device).repeat(2)[None].expand(B, -1)
        out = self.hf.base_model(input_ids=torch.cat((z, x), dim=1), position_ids=positions,
                                 attention_mask=mask[None, None].expand(B, 1, 2 * L, 2 * L))
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        i = torch.arange(L, device=x.device)
        source = torch.where((i % block == 0) & (i > 0), L + i - 1, (i - 1).clamp(min=0))
        logits = self.hf.get_output_embeddings()(hidden[:, source])  # the head on the L rows scored only
        return logits.float() if self.fp32_logits else logits

    @torch.compiler.disable  # a fresh random mask each step; its rate changes during annealing
    def _visibility(self, length: int, device: torch.device) -> torch.Tensor:
        """(T, T) bool: causal, plus each later key opened with probability `future_visible`."""
        causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
        if not self.training or self.future_visible >= 1:
            return torch.ones_like(causal)
        return causal | (torch.rand(length, length, device=device) < self.future_visible)

    def forward(self, idx: torch.Tensor, t: torch.Tensor | None = None, cache=None, return_hidden: bool = False,
                positions: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        if cache is not None:
            raise DlmError("KV caches need dlm's own Transformer; sample this backbone without --kv-cache")
        if isinstance(attn_mask, BlockDiffusionLayout):  # block diffusion's [noisy | clean] training input
            L, C = attn_mask.length, attn_mask.copies  # [z_1 … z_C | x]: each noisy copy in its own pass
            x = idx[:, C * L:]
            return torch.cat([self.block_diffusion_logits(idx[:, c * L:(c + 1) * L], x, attn_mask.block)
                              for c in range(C)], dim=1)
        B, T = idx.shape
        mask = self._visibility(T, idx.device)[None, None]  # (1, 1, T, T)
        if attn_mask is not None:  # the samplers' padding mask, (B or 1, 1, Tq, Tk)
            mask = mask & attn_mask
        kwargs = {} if positions is None else {"position_ids": positions.expand(B, -1)}
        out = self.hf(input_ids=idx, attention_mask=mask.expand(B, 1, T, T), output_hidden_states=return_hidden,
                      **kwargs)
        result = out.hidden_states[-1] if return_hidden else out.logits
        result = torch.cat((result[:, :1], result[:, :-1]), dim=1)  # position i reads the state at i − 1
        return result.float() if self.fp32_logits and not return_hidden else result


def build_model(cfg: ModelConfig, pretrained: bool = False) -> nn.Module:
    """dlm's Transformer, or the `transformers` backbone the config names (pretrained weights only
    when asked: a run that loads a checkpoint builds from the config alone)."""
    if not cfg.backbone:
        from dlm.model.transformer import Transformer

        return Transformer(cfg)
    pretrained = pretrained and cfg.backbone_init == "pretrained"
    if is_causal_lm(cfg.backbone_config):
        return HFCausalDenoiser(cfg, pretrained=pretrained)
    return HFMaskedLM(cfg, pretrained=pretrained)
