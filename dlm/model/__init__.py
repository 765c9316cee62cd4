"""The transformer shared by the diffusion model and its autoregressive twin.

`ModelConfig` imports without torch; `Transformer` and `KVCache` load torch when first used.
"""

from dlm.model.config import ModelConfig

__all__ = ["KVCache", "ModelConfig", "Transformer"]


def __getattr__(name: str):
    if name == "Transformer":
        from dlm.model.transformer import Transformer

        return Transformer
    if name == "KVCache":
        from dlm.model.kv_cache import KVCache

        return KVCache
    raise AttributeError(f"module 'dlm.model' has no attribute {name!r}")
