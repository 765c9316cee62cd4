"""The optimizers (AdamW with decoupled weight decay on matrices only; Muon on the hidden matrices
with AdamW on the rest) and warmup + cosine LR as a pure function."""

from __future__ import annotations

import math

import torch


def make_optimizer(params: torch.nn.Module | list[torch.Tensor], lr: float, weight_decay: float,
                   betas: tuple[float, float], fused: bool = True) -> torch.optim.AdamW:
    """AdamW over a model's parameters (or a list of them); weight decay on matrices only."""
    params = list(params.parameters() if isinstance(params, torch.nn.Module) else params)
    decay = [p for p in params if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in params if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel exists for CUDA and CPU tensors in current PyTorch (not for FSDP's DTensors).
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None, foreach=None if fused else True)


def is_hidden_matrix(name: str, param: torch.Tensor) -> bool:
    """Muon's share: the 2-D weights inside the network. The token embedding and the output head
    are lookups and classifiers, not maps between hidden states; they stay with AdamW, as do norms."""
    io = name.split(".")[0] == "head" or "embed" in name or "lm_head" in name or name.endswith(("wte.weight",
                                                                                                "wpe.weight"))
    return param.dim() == 2 and not io and "lora_" not in name


# Coefficients of the quintic Newton–Schulz iteration (Jordan et al., "Muon", 2024): tuned so that five
# steps push every singular value of a normalised matrix into roughly [0.7, 1.2].
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalise(update: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """≈ U Vᵀ of each (..., m, n) matrix's SVD U S Vᵀ, by a quintic Newton–Schulz iteration in `dtype`.

    bf16 is what the GPU recipe uses; on a CPU without bf16 units it is emulated and ~15× slower than
    fp32, so the trainer passes its own training dtype."""
    a, b, c = NS_COEFFICIENTS
    x = update.to(dtype)
    tall = x.shape[-2] > x.shape[-1]
    if tall:  # iterate on the short side: the Gram matrix is min(m, n)²
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp_min(1e-7)  # spectral norm ≤ Frobenius norm ≤ 1
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.mT if tall else x


class Muon(torch.optim.Optimizer):
    """Momentum, orthogonalised: each 2-D parameter moves by lr · 0.2·√max(m, n) · NS(Nesterov momentum).

    The 0.2·√max(m, n) factor gives the update the RMS of a typical AdamW update (Liu et al.,
    "Muon is scalable for LLM training", 2025), so AdamW's learning rate and weight decay carry over.
    Matrices of one shape are orthogonalised together, as one batched iteration."""

    def __init__(self, params, lr: float, weight_decay: float = 0.0, momentum: float = 0.95,  # noqa: ANN001
                 nesterov: bool = True, ns_steps: int = 5, ns_dtype: torch.dtype = torch.float32):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "momentum": momentum,
                                  "nesterov": nesterov, "ns_steps": ns_steps})
        self.ns_dtype = ns_dtype
        if any(p.dim() != 2 for g in self.param_groups for p in g["params"]):
            raise ValueError("Muon updates 2-D matrices only")

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 (torch.optim.Optimizer's signature)
        for group in self.param_groups:
            by_shape: dict[torch.Size, list[tuple[torch.Tensor, torch.Tensor]]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                buf.lerp_(p.grad, 1 - group["momentum"])
                update = p.grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf
                by_shape.setdefault(p.shape, []).append((p, update))
            for shape, pairs in by_shape.items():
                directions = orthogonalise(torch.stack([u for _, u in pairs]), group["ns_steps"], self.ns_dtype)
                step_size = group["lr"] * 0.2 * max(shape) ** 0.5
                for (p, _), direction in zip(pairs, directions, strict=True):
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                    p.add_(direction.to(p.dtype), alpha=-step_size)


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon on the hidden matrices, AdamW on everything else, stepped as one optimizer.

    Muon's step size matches AdamW's update RMS, so both halves share one learning rate, schedule and
    weight decay. `param_groups` lists both halves' groups (the trainer sets every group's lr); the
    state dict holds each half's own."""

    def __init__(self, model: torch.nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
                 fused: bool = True, ns_dtype: torch.dtype = torch.float32):
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        hidden = [p for n, p in named if is_hidden_matrix(n, p)]
        self.muon = Muon(hidden, lr=lr, weight_decay=weight_decay, ns_dtype=ns_dtype)
        self.adamw = make_optimizer([p for n, p in named if not is_hidden_matrix(n, p)], lr, weight_decay, betas,
                                    fused)
        # Deliberately not Optimizer.__init__: the two halves own the parameters and their state.
        self.defaults = {"lr": lr}
        self.state = {}

    @property
    def param_groups(self) -> list[dict]:  # type: ignore[override]
        # Read afresh each time: load_state_dict replaces each half's group dicts.
        return self.muon.param_groups + self.adamw.param_groups

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 (torch.optim.Optimizer's signature)
        self.muon.step()
        self.adamw.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none)
        self.adamw.zero_grad(set_to_none)

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        if set(state_dict) != {"muon", "adamw"}:
            raise ValueError("this optimizer state is not train.optimizer=muon's")
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])


def build_optimizer(kind: str, model: torch.nn.Module, lr: float, weight_decay: float,
                    betas: tuple[float, float], fused: bool = True,
                    ns_dtype: torch.dtype = torch.float32) -> torch.optim.Optimizer:
    """train.optimizer's choice: `adamw` or `muon` (Muon on hidden matrices, AdamW on the rest;
    its orthogonalisation runs in `ns_dtype`). A model with no trainable hidden matrix gets AdamW."""
    if kind == "muon" and any(is_hidden_matrix(n, p) for n, p in model.named_parameters() if p.requires_grad):
        return MuonWithAdamW(model, lr, weight_decay, betas, fused, ns_dtype)
    return make_optimizer(model, lr, weight_decay, betas, fused)


def lr_at(progress: float, step: int, base_lr: float, warmup_steps: int, min_lr_ratio: float) -> float:
    """Linear warmup over `warmup_steps`, then cosine decay to base_lr·min_lr_ratio at progress 1."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = min(max(progress, 0.0), 1.0)
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return base_lr * (min_lr_ratio + (1 - min_lr_ratio) * cosine)
