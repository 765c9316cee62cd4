"""What the micro-benchmarks share: the median of a step, compiled or eager, and the JSON report."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from dlm.io import atomic_write_json
from dlm.runtime import cpu_has_bf16, pin_cpu_vector_width


def median_seconds(step: Callable[[], None], compiled: bool, repeats: int) -> float:
    """Median wall seconds of `step()` over `repeats` calls, after three untimed ones."""
    torch._dynamo.reset()  # each variant compiles afresh (one code object would hit the recompile limit)
    if compiled:
        pin_cpu_vector_width()
    run = torch.compile(step) if compiled else step
    for _ in range(3):  # compilation and first-call allocations
        run()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def median_ms_in_turns(passes: dict[str, Callable[[], float]], repeats: int, what: str,
                       rtol: float = 1e-3) -> dict[str, float]:
    """Median milliseconds of each named pass, timed in turns (a slow minute of the machine falls on all alike)
    after three untimed calls of each (compilation). Each pass returns its loss; the bench stops if they
    differ, as variants that must give the same numbers."""
    losses = {name: [run() for _ in range(3)][-1] for name, run in passes.items()}
    if max(losses.values()) - min(losses.values()) > rtol * max(abs(v) for v in losses.values()):
        raise SystemExit(f"{what}: the variants gave different losses {losses} (they must not)")
    times: dict[str, list[float]] = {name: [] for name in passes}
    for _ in range(repeats):
        for name, run in passes.items():
            started = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - started) * 1e3)
    return {name: statistics.median(ms) for name, ms in times.items()}


def recipe_model(vocab: int, objective: str) -> torch.nn.Module:
    """The README's 3 × 192 model (tied embeddings) for `objective` (bd3, mdlm or ar), seeded, uncompiled."""
    from dlm.model.config import ModelConfig
    from dlm.model.transformer import Transformer

    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=vocab, n_layer=3, n_head=4, d_model=192, block_size=256, mlp="relu2",
                                   tie_weights=True, clean_causal=objective == "bd3", causal=objective == "ar"))


def recipe_pass(net: torch.nn.Module, model: torch.nn.Module, x: torch.Tensor, objective: str, dtype: torch.dtype,
                noise: torch.Generator) -> float:
    """One training pass (forward and backward, no optimizer) of `net` (the model, compiled or wrapped) under the
    README's recipe for `objective`, with the same noise every call; returns the loss. The last token ids stand in
    for [MASK] and [BOS]: the speed depends on the sizes alone."""
    from dlm.diffusion.schedules import Linear
    from dlm.objectives.autoregressive import ar_loss
    from dlm.objectives.block_diffusion import bd3_loss
    from dlm.objectives.mdlm import mdlm_loss

    vocab = model.cfg.vocab_size
    mask_id, bos_id = vocab - 1, vocab - 2
    noise.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        if objective == "bd3":  # count noise, a next-token clean copy, its input mask
            out = bd3_loss(net, x, Linear(), mask_id, 4, generator=noise, clean_ar_weight=1.0, clean_input_mask=0.15,
                           count_masking=True)
        elif objective == "mdlm":
            out = mdlm_loss(net, x, Linear(), mask_id, generator=noise, weighting="clipped")
        else:
            out = ar_loss(net, x, bos_id, input_mask=0.15, mask_id=mask_id, generator=noise)
    loss = out.nll_sum / out.n_tokens
    loss.backward()
    model.zero_grad(set_to_none=True)
    return float(loss.detach())


class EveryRow(torch.nn.Module):
    """A model seen without `rows=`: the objectives then compute logits for every row (dlm.objectives.scored_rows),
    as they did before the output head skipped the unscored ones."""

    def __init__(self, model: torch.nn.Module, cfg):
        super().__init__()
        self.model, self.cfg = model, cfg

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.model(*args, **kwargs)


def write_report(path: str, rows: list[dict], **settings) -> None:
    """Write `rows` with the bench's `settings` and the machine they came from (CPU class included)."""
    atomic_write_json(Path(path), {
        **settings, "torch": torch.__version__, "machine": platform.machine(),
        "cpu_class": "AVX512-BF16/AMX" if cpu_has_bf16() else "no bf16 units (AVX2 class)",
        "threads": torch.get_num_threads(), "unit": "median ms per forward + backward", "rows": rows})
    print(f"written to {path}")
