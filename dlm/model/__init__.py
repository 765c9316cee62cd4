"""The transformer shared by the diffusion model and its autoregressive twin."""

from dlm.model.transformer import KVCache, ModelConfig, Transformer

__all__ = ["KVCache", "ModelConfig", "Transformer"]
