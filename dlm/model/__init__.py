"""The transformer shared by the diffusion model and its autoregressive twin."""

from dlm.model.kv_cache import KVCache
from dlm.model.transformer import ModelConfig, Transformer

__all__ = ["KVCache", "ModelConfig", "Transformer"]
