"""nn.Linear, plus a faster product for the few rows of a sampling pass on a CPU.

`F.linear` multiplies by the (out, in) weight as stored. On a CPU, for a few rows (one token of the AR
twin, the 6 to 20 rows of a self-speculative pass), the same product with a copy of the weight stored
transposed, `x @ W_t`, often takes half the time (bench/small_linear.py; docs/benchmarks.md). So when
nothing needs gradients, a layer that is small and not narrowing keeps such a copy and uses it. The copy
is made on first use and made again whenever the weight changes (an optimizer step, a load, a move), so
it can never be stale. The weight, the state dict and training are untouched.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

MAX_ROWS = 64
"""Rows up to which the transposed copy is used. Beyond this the two take the same time (the 192-wide model,
Intel Xeon, bench/small_linear.py --rows 32 64 128 192)."""

MAX_IN_FEATURES = 384
"""Input widths up to which the transposed copy is used: measured faster or equal for widths 192 and 384 when
the layer does not narrow (out ≥ in); at 768 some shapes are slower with it (bench/small_linear.py
--d-model 768). Only layers widening up to 6× qualify (qkv 3×, MLP up 4× or SwiGLU's 5.3×): not an output
head over a large vocabulary, whose copy would be large."""


class Linear(nn.Linear):
    """nn.Linear that multiplies a few rows by a transposed copy of its weight at inference on a CPU, in fp32
    (see the module's docstring)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, **kwargs):
        super().__init__(in_features, out_features, bias, **kwargs)
        # The shapes where the copy was measured to help; the rest of the test is per call (it is on the
        # path of every layer of every pass, so it is kept to a few attribute reads).
        self._copy_helps = (not bias and in_features <= MAX_IN_FEATURES
                            and in_features <= out_features <= 6 * in_features)
        self._max_numel = MAX_ROWS * in_features
        # (weight version, address, the weight itself, the copy). Holding the weight keeps its memory from
        # being reused, so a new weight (after a move or a `.data =`) can never show the old address.
        self._transposed: tuple[int, int, torch.Tensor, torch.Tensor] | None = None

    def _weight_t(self, w: torch.Tensor) -> torch.Tensor:
        held = self._transposed
        if held is None or held[0] != w._version or held[1] != w.data_ptr():
            held = (w._version, w.data_ptr(), w.detach(), w.detach().t().contiguous())
            self._transposed = held
        return held[3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if (self._copy_helps and not torch.is_grad_enabled() and x.is_cpu and x.dtype is torch.float32
                and w.dtype is torch.float32 and x.numel() <= self._max_numel
                and not torch.is_autocast_enabled("cpu")
                # traced or compiled code keeps the plain product: the copy would be a second constant there
                and not (torch.jit.is_tracing() or torch.compiler.is_compiling())):
            return x @ self._weight_t(w)
        return F.linear(x, w, self.bias)
