"""The network's shape and options: a plain dataclass, importable without torch."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ModelConfig:
    vocab_size: int = 69
    """Number of token ids, special tokens included (set from the tokenizer)."""
    n_layer: int = 6
    """Transformer blocks."""
    n_head: int = 6
    """Attention heads per block (d_model / n_head must be even, for RoPE)."""
    d_model: int = 384
    """Width of the residual stream."""
    block_size: int = 256
    """Longest sequence the model sees (RoPE tables are built for it)."""
    mlp: str = "relu2"
    """'relu2' (4x hidden, squared ReLU) or 'swiglu' (8/3x hidden, gated SiLU)."""
    tie_weights: bool = False
    """Share the input embedding and output projection."""
    time_conditioning: bool = False
    """Feed the noise level t to every block via adaptive RMSNorm (MDLM finds it optional)."""
    causal: bool = False
    """Causal attention: the autoregressive twin. False: bidirectional (diffusion)."""
    clean_causal: bool = False
    """Block diffusion: finished blocks (the clean copy in training, the KV cache in sampling) are read
    token-causally, each token seeing only those before it, instead of block-causally; the clean copy is
    then also a next-token model, which diffusion.clean_ar_weight trains. dlm's own Transformer only: runs
    of other objectives, or on a Hugging Face backbone, are saved with false."""
    rope_base: float = 10000.0
    """Base of the rotary position embedding's frequencies."""
    dropout: float = 0.0
    """Dropout on attention weights (training only; 0 = off). Costly on CPU: a (B, heads, T, T) mask."""
    resid_dropout: float = 0.0
    """Dropout on each attention and MLP output before it joins the residual stream (training only).

    On CPU the mask is drawn as random bytes, so the rate is rounded to a multiple of 1/256 (0.1 → 0.1016)."""
    lora_rank: int = 0
    """LoRA fine-tuning: rank of the low-rank update of each linear layer of the blocks (frozen base); 0 = off."""
    lora_alpha: float = 0.0
    """LoRA scale α (the update is α/rank·B·A); 0 means α = rank."""
    backbone: str = ""
    """'' = dlm's Transformer; hf:PATH = a `transformers` masked LM (BERT, RoBERTa, …) or causal LM (GPT-2,
    LLaMA/SmolLM2, Qwen2: adapted, see `dlm adapt`) as the denoiser."""
    backbone_init: str = "pretrained"
    """With a backbone: start from its pretrained weights, or 'config' for fresh ones of the same shape."""
    backbone_config: dict = field(default_factory=dict)
    """With a backbone: its Hugging Face config, copied in when the run starts (so the run loads alone)."""

    def validate(self) -> None:
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if (self.d_model // self.n_head) % 2:
            raise ValueError("head width d_model/n_head must be even for RoPE")
        if self.mlp not in ("relu2", "swiglu"):
            raise ValueError(f"mlp={self.mlp!r} is not one of 'relu2', 'swiglu'")
        if self.backbone and not self.backbone.startswith("hf:"):
            raise ValueError(f"backbone={self.backbone!r}: write hf:PATH (a Hugging Face model folder), or '' "
                             "for dlm's Transformer")
        if self.backbone_init not in ("pretrained", "config"):
            raise ValueError(f"backbone_init={self.backbone_init!r} is not one of 'pretrained', 'config'")
        if self.backbone and (self.causal or self.time_conditioning):
            raise ValueError("a Hugging Face backbone is a bidirectional denoiser: no causal AR objective or "
                             "time conditioning with it")
        for name in ("dropout", "resid_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be in [0, 1) (0 = off)")
        for name in ("vocab_size", "n_layer", "n_head", "d_model", "block_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
