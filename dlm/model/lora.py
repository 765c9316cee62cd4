"""LoRA (Hu et al. 2021): fine-tune a low-rank update W + (α/r)·B·A of each linear layer of the blocks,
the base weights frozen. The embedding and the output head stay trainable, since chat fine-tuning
adds token rows that must learn. B starts at zero, so the adapted model starts as the base model."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

TARGETS = ("attn.qkv", "attn.proj", "mlp.up", "mlp.down")


class LoRALinear(nn.Module):
    """A linear layer plus its low-rank update. The base is an nn.Linear, or GPT-2's Conv1D (the
    same map with its weight stored transposed, (in, out))."""

    def __init__(self, base: nn.Module, rank: int, alpha: float):
        super().__init__()
        self.base, self.scale = base, alpha / rank
        self.transposed = not isinstance(base, nn.Linear)
        n_out, n_in = base.weight.shape[::-1] if self.transposed else base.weight.shape
        self.lora_a = nn.Parameter(torch.empty(rank, n_in))
        self.lora_b = nn.Parameter(torch.zeros(n_out, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        base.weight.requires_grad_(False)

    @property
    def weight(self) -> torch.Tensor:  # the effective weight (what merging would save)
        delta = self.scale * (self.lora_b @ self.lora_a)
        return self.base.weight + (delta.t() if self.transposed else delta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.t() @ self.lora_b.t()) * self.scale


def add_lora(model: nn.Module, rank: int, alpha: float | None = None) -> nn.Module:
    """Wrap the blocks' linear layers in place; freeze everything in the blocks but the adapters."""
    alpha = float(alpha if alpha is not None else rank)
    for block in model.blocks:
        for name in TARGETS:
            parent_name, child = name.split(".")
            parent = getattr(block, parent_name)
            setattr(parent, child, LoRALinear(getattr(parent, child), rank, alpha))
        for param_name, param in block.named_parameters():
            if "lora_" not in param_name:
                param.requires_grad_(False)
    return model


def add_lora_to_backbone(model: nn.Module, rank: int, alpha: float) -> nn.Module:
    """LoRA on a `transformers` causal LM: every linear map inside its layers (attention and MLP) gets
    an adapter and is frozen, as are the norms; the token embeddings and the head stay trainable,
    since the rows dlm adds ([MASK], chat markers) must learn."""
    io = {id(model.get_input_embeddings()), id(model.get_output_embeddings())}
    targets = [(name, module) for name, module in model.named_modules()
               if id(module) not in io and (isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D")]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, LoRALinear(module, rank, alpha))
    trainable = {id(m.weight) for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}
    for param_name, param in model.named_parameters():
        param.requires_grad_("lora_" in param_name or id(param) in trainable)
    return model


def base_keys_to_lora(state: dict[str, torch.Tensor], model_keys: set[str]) -> dict[str, torch.Tensor]:
    """A plain model's state dict renamed for a LoRA model: `…qkv.weight` → `…qkv.base.weight`."""
    out = {}
    for key, value in state.items():
        wrapped = key.replace(".weight", ".base.weight")
        out[wrapped if key not in model_keys and wrapped in model_keys else key] = value
    return out
