"""One transformer for both objectives.

A pre-norm decoder-style stack (RoPE, RMSNorm, QK-norm, scaled-dot-product attention, ReLU² or
SwiGLU MLP). `ModelConfig.causal` is the only difference between the diffusion network
(bidirectional) and its autoregressive twin; everything else, parameter count included, is shared.

The model knows nothing of diffusion: it maps token ids (and, when `time_conditioning` is on,
a noise level t per sequence) to logits. SUBS parameterisation lives in `dlm.objectives.mdlm`
and the samplers.

Shapes: B batch, T sequence, D width, H heads, Hd head width, V vocabulary.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from dlm.model.block_attention import BlockDiffusionLayout, block_diffusion_attention
from dlm.model.config import ModelConfig
from dlm.model.kv_cache import KVCache
from dlm.model.linear import Linear
from dlm.model.lora import add_lora


def rope_tables(block_size: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(block_size, dtype=torch.float32), inv_freq)  # (T, Hd/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, H, T, Hd); rotate the two halves of the head (GPT-NeoX layout).
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm whose weight follows the input dtype, so bf16 inputs take the fused kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.normalized_shape, self.weight.to(x.dtype), self.eps)


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool,
                       dropout: float, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(QKᵀ/√d)V with plain matmuls. attn_mask: broadcastable to (B, H, Tq, Tk), bool (True where a
    query may attend) or a float bias added to the scores (0 or −inf).

    On CPU this beats PyTorch's flash kernel: the matmuls run on the bf16 units and
    torch.compile fuses the softmax (bench/train_throughput.py: 7.6k vs 5.8k tokens/s for the
    shakespeare-char geometry on 2 cores). The exception is causal fp32, where the flash kernel
    wins (bench/attention.py); Attention sends that case to it.
    """
    scores = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)  # (B, H, Tq, Tk)
    if is_causal:
        # An added −inf bias, not masked_fill: its backward is the identity, and the compiler fuses
        # it into the softmax (bench/attention.py, compiled, forward + backward of one causal layer:
        # 27.2 → 17.7 ms in bf16, 40.2 → 32.6 ms in fp32, where SDPA takes 26.1).
        Tq, Tk = scores.shape[-2:]
        future = torch.full((Tq, Tk), float("-inf"), dtype=scores.dtype, device=q.device).triu(Tk - Tq + 1)
        scores = scores + future
    if attn_mask is not None:  # boolean (True: may attend) or an additive bias, as SDPA takes them
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    weights = F.dropout(scores.softmax(dim=-1), dropout) if dropout else scores.softmax(dim=-1)
    return weights @ v


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.n_head, self.head_dim, self.layer = cfg.n_head, cfg.d_model // cfg.n_head, layer
        self.causal, self.dropout = cfg.causal, cfg.dropout
        self.qkv = Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = Linear(cfg.d_model, cfg.d_model, bias=False)
        # QK-norm keeps attention logits bounded, which makes bf16 and higher LRs safe.
        self.q_norm = RMSNorm(self.head_dim, eps=1e-6)
        self.k_norm = RMSNorm(self.head_dim, eps=1e-6)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None = None, attn_mask: torch.Tensor | None = None,
                queries: int | None = None) -> torch.Tensor:
        """`queries`: only the first rows' outputs are wanted (block diffusion's last layer)."""
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        if queries is not None:
            q, cos_q, sin_q = q[:, :, :queries], cos[..., :queries, :], sin[..., :queries, :]
            if isinstance(attn_mask, torch.Tensor) and attn_mask.shape[-2] == T:  # a mask row per query
                attn_mask = attn_mask[..., :queries, :]
        else:
            cos_q, sin_q = cos, sin
        q, k = apply_rope(self.q_norm(q), cos_q, sin_q), apply_rope(self.k_norm(k), cos, sin)
        # A single new query attends to every cached position, so it needs no mask.
        is_causal = self.causal and T > 1
        if cache is not None:
            if self.causal and cache.length > 0 and T > 1:
                raise ValueError("KV cache: extend one token at a time after the prefill")
            k, v = cache.update(self.layer, k, v)
        dropout = self.dropout if self.training else 0.0
        if isinstance(attn_mask, BlockDiffusionLayout):  # block diffusion's [noisy | clean] training input
            y = block_diffusion_attention(q, k, v, attn_mask, dropout)
            return self.proj(y.transpose(1, 2).reshape(B, y.shape[2], D))
        # CPU: explicit matmuls, but causal fp32 goes to SDPA's flash kernel (faster there, bench/attention.py),
        # except under ONNX export, whose traced lengths make is_causal a tensor that SDPA refuses.
        exporting = torch.jit.is_tracing() or torch.compiler.is_exporting()
        flash = is_causal and attn_mask is None and q.dtype == torch.float32 and not exporting
        # Sampling (no autograd, eager) goes to SDPA too: one row at a time, about half the time of the
        # explicit path for 1 to 20 queries; in fp32 at batch 32 too (351 against 441 µs for 4 queries a row,
        # 1.00 against 1.52 ms for 20, Intel Xeon). At batch 32 in bf16 the explicit path won on an AMD EPYC
        # (121 against 521 µs) and lost on the Xeon: it stays there (bench/attention.py --inference).
        flash = flash or ((q.shape[0] == 1 or q.dtype == torch.float32) and not torch.is_grad_enabled()
                          and not exporting and not torch.compiler.is_compiling())
        if q.device.type == "cpu" and not flash:
            y = explicit_attention(q, k, v, is_causal, dropout, attn_mask)
        elif attn_mask is not None:  # SDPA takes either a mask or is_causal: fold causality into the mask
            if is_causal:
                Tq, Tk = q.shape[2], k.shape[2]
                attn_mask = attn_mask & torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(Tk - Tq)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
        else:  # flash / memory-efficient kernels
            y = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, dropout_p=dropout)
        return self.proj(y.transpose(1, 2).reshape(B, y.shape[2], D))


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """F.dropout, but on CPU with a mask drawn as random bytes (p rounded to a multiple of 1/256).

    CPU dropout spends ~15 ns per element drawing one float per element (a quarter of a training
    step of the 4×192 AR twin at p=0.1); filling 64-bit words and reading them as bytes draws eight
    mask entries per call of the generator, about 15× faster (bench/dropout.py).
    """
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training)
    drop = min(255, max(1, round(p * 256)))
    n = x.numel()
    words = torch.empty((n + 7) // 8, dtype=torch.int64, device=x.device).random_(-2**63, None)
    keep = words.view(torch.uint8)[:n].view(x.shape) >= drop
    return x * keep * (256 / (256 - drop))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.kind = cfg.mlp
        if cfg.mlp == "swiglu":
            hidden = int(8 * cfg.d_model / 3 + 63) // 64 * 64
            self.up = Linear(cfg.d_model, 2 * hidden, bias=False)
        else:
            hidden = 4 * cfg.d_model
            self.up = Linear(cfg.d_model, hidden, bias=False)
        self.down = Linear(hidden, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "swiglu":
            gate, value = self.up(x).chunk(2, dim=-1)
            return self.down(F.silu(gate) * value)
        return self.down(F.relu(self.up(x)).square())


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.norm1 = RMSNorm(cfg.d_model, eps=1e-6)
        self.attn = Attention(cfg, layer)
        self.norm2 = RMSNorm(cfg.d_model, eps=1e-6)
        self.mlp = MLP(cfg)
        # adaLN: noise level -> per-channel scale and shift of both norms; zero-init = identity.
        self.modulation = nn.Linear(cfg.d_model, 4 * cfg.d_model) if cfg.time_conditioning else None
        self.resid_dropout = cfg.resid_dropout

    def _branch(self, y: torch.Tensor) -> torch.Tensor:
        return dropout(y, self.resid_dropout, self.training) if self.resid_dropout else y

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cond: torch.Tensor | None, cache: KVCache | None,
                attn_mask: torch.Tensor | None = None, queries: int | None = None) -> torch.Tensor:
        """`queries`: return only the first rows (block diffusion's last layer reads every key and
        value but computes the noisy rows alone: the clean rows' outputs would go unread)."""
        rows = x if queries is None else x[:, :queries]
        if self.modulation is not None and cond is not None:
            scale1, shift1, scale2, shift2 = self.modulation(cond)[:, None].chunk(4, dim=-1)
            x = rows + self._branch(self.attn(self.norm1(x) * (1 + scale1) + shift1, cos, sin, cache, attn_mask,
                                              queries))
            return x + self._branch(self.mlp(self.norm2(x) * (1 + scale2) + shift2))
        x = rows + self._branch(self.attn(self.norm1(x), cos, sin, cache, attn_mask, queries))
        return x + self._branch(self.mlp(self.norm2(x)))


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of t in [0, 1]; (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    angles = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat((angles.cos(), angles.sin()), dim=-1)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model, eps=1e-6)
        self.head = Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.head.weight = self.embed.weight
        self.time_mlp = (nn.Sequential(nn.Linear(cfg.d_model, cfg.d_model), nn.SiLU(),
                                       nn.Linear(cfg.d_model, cfg.d_model))
                         if cfg.time_conditioning else None)
        cos, sin = rope_tables(cfg.block_size, cfg.d_model // cfg.n_head, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.fp32_logits = False
        """Compute the output projection in fp32 even under autocast (set for sampling)."""
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.down.weight")):  # GPT-2: shrink with depth
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))
            elif "modulation" in name:  # adaLN starts as the identity
                nn.init.zeros_(p)
        if cfg.lora_rank:
            add_lora(self, cfg.lora_rank, cfg.lora_alpha or cfg.lora_rank)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, t: torch.Tensor | None = None,
                cache: KVCache | None = None, return_hidden: bool = False,
                positions: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
                queries: int | None = None, rows: torch.Tensor | None = None) -> torch.Tensor:
        """idx: (B, T) token ids; t: (B,) noise levels (used only with time conditioning).

        positions: (B, T) RoPE positions per row (default: consecutive, from the cache's write
        position or 0) — left-padded batches use it so every row counts from its own first token.
        attn_mask: bool, broadcastable to (B, H, T, Tk), True where a query may attend (on top of
        the causal mask of the AR twin); or a BlockDiffusionLayout, block diffusion's [noisy | clean]
        training input (dlm.model.block_attention), for which only the noisy half's rows come back.
        queries: only the first `queries` rows' outputs are wanted: the last layer reads every row's key and
        value (and stores them in the cache) but computes only those rows (self-speculative decoding).
        rows: (N,) flat indices into the (B·T) output rows: only those go through the output head, which over
        a BPE vocabulary is a large share of a pass; training scores masked positions only (dlm.objectives).
        Returns logits (B, T, V), or (N, V) with `rows`; the final normalised hidden states instead with
        `return_hidden`.
        """
        B, T = idx.shape
        start, end = cache.span(T) if cache is not None else (0, T)
        # Explicit positions may repeat (block diffusion reads a noisy and a clean copy of one window; a
        # self-speculative pass reads several drafted blocks), so they, not the row count, are checked;
        # outside compiled code only (reading them back would break the graph).
        if positions is not None:
            reach = 0 if torch.compiler.is_compiling() else int(positions.max()) + 1
        else:
            reach = max(start + T, end)
        if reach > self.cfg.block_size:
            raise ValueError(f"sequence of {reach} tokens exceeds block_size={self.cfg.block_size}")
        if positions is None:
            cos, sin = self.rope_cos[start:start + T], self.rope_sin[start:start + T]  # (T, Hd/2)
        else:
            cos, sin = self.rope_cos[positions][:, None], self.rope_sin[positions][:, None]  # (B, 1, T, Hd/2)
        cond = None
        if self.time_mlp is not None:
            if t is None:
                raise ValueError("this model is time-conditioned: pass t")
            cond = self.time_mlp(timestep_embedding(t, self.cfg.d_model).to(self.embed.weight.dtype))
        x = self.embed(idx)
        # Block diffusion: the last layer's clean rows feed nothing (no later layer reads their keys).
        last_queries = queries
        if isinstance(attn_mask, BlockDiffusionLayout):
            if attn_mask.clean_causal != self.cfg.clean_causal:
                raise ValueError(f"this model reads finished blocks {'token' if self.cfg.clean_causal else 'block'}"
                                 "-causally (model.clean_causal): build the layout with clean_causal to match")
            last_queries = None if attn_mask.clean_rows else attn_mask.copies * attn_mask.length
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, cond, cache, attn_mask, last_queries if i == len(self.blocks) - 1 else None)
        if cache is not None:
            cache.advance(T)
        hidden = self.norm(x)
        if rows is not None:
            hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows)
        if return_hidden:
            return hidden
        if self.fp32_logits and hidden.dtype != torch.float32:
            # Inference under bf16 autocast: the body runs in bf16, the logits are computed in
            # fp32 so probabilities are not rounded to bf16's 8-bit mantissa.
            with torch.autocast(hidden.device.type, enabled=False):
                return F.linear(hidden.float(), self.head.weight.float())
        return self.head(hidden)

    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        cfg, p = self.cfg, self.embed.weight
        return KVCache(cfg.n_layer, batch, cfg.n_head, max_len or cfg.block_size,
                       cfg.d_model // cfg.n_head, p.device, p.dtype)
