"""The budget-aware default: how much can this machine train in the time given, and which settings
did the study find best for that many tokens?

`dlm train` with no --preset on a CPU runs a short probe — a few eager training steps of the
default model on random tokens, a few seconds, reported — turns the measured speed into the
number of tokens the time budget buys, and applies the row of SIZE_TABLE for that many tokens.
The choice and its reason are printed first and kept in the run's config (train.auto_size);
--preset, or key=value for the same fields, override it. The probe does not run (and one line says
why) when its answer would not be used: a `transformers` backbone (model.backbone) is the network,
or key=value sets every field the table chooses (model.n_layer and model.d_model). The table comes
from docs/study.md, "Size for the budget (equal tokens)".
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from dlm.config import RunConfig, apply_overrides, parse_override

# Fewest tokens of the default model (4 × 256) the budget buys → the geometry the study found best
# for that budget (applied to the default preset, whose recipe it keeps). docs/study.md, "Size for
# the budget (equal tokens)": ~3.4M tokens (an AVX2-only CPU training in fp32 for 10 minutes) and
# ~6.8M (a CPU with bf16 units) were each trained at equal tokens for the sizes that budget buys.
SIZE_TABLE: list[tuple[float, str, list[str]]] = [
    (0.0, "3x192", ["model.n_layer=3", "model.d_model=192"]),
    (5e6, "4x192", ["model.d_model=192"]),
]
# The AR twin on top of its row (same network, a regulariser): with Muon at the larger budget it sees
# ~7.5 epochs of Tiny Shakespeare and overfits (validation NLL rising over the last 350 steps, train
# 1.06 against val 1.49). Hiding 10 % of its inputs behind [MASK] beat residual dropout 0.1 by 0.026
# at equal tokens and costs no throughput; in 10-minute runs 15 % with weight decay 0.3 did best
# (1.445 against 1.452 for 15 % and 1.456 for 10 %; four runs of it average 1.447; docs/study.md,
# "The AR twin's regulariser (equal tokens)").
AR_EXTRA: dict[str, list[str]] = {"4x192": ["train.ar_input_mask=0.15", "train.weight_decay=0.3"]}
# Training in earnest runs compiled and the probe eagerly. Tokens the 4 × 256 model trains in a
# budget ≈ eager probe speed × budget × this factor (compiled speed over eager speed, less the
# compilation and validation inside the budget). Measured on the development Xeon (docs/study.md,
# "Size for the budget (equal tokens)"):
# fp32 probe 4,024 tokens/s against ~5,600 trained; bf16 5,987 against ~11,000.
PROBE_EFFICIENCY = {"float32": 1.4, "bfloat16": 1.85}
# The probe times MDLM steps. A block-diffusion (bd3) step reads a noisy and a clean copy of each window and
# costs about twice as much (1.8–2.3× in compiled bf16 steps of the 4 × 192 model, AMD EPYC, 2026-12-06), so
# the same budget trains it on about half the tokens, and the table is read at that count: on a machine where
# that falls below the 4 × 192 row, 3 × 192 reached the lower bound in 10 minutes (docs/block-diffusion-notebook.md,
# "eighth session").
STEP_COST = {"bd3": 2.0}
# A block run on a CPU budget takes more, smaller steps: batch 8 instead of the preset's 16, the same tokens in
# twice the steps (a bf16 step of 8 costs half one of 16). In 10-minute runs on an AMD EPYC (AVX512-BF16, bf16;
# the probe counted 3.2–4.9M tokens) batch 8 lowered the NELBO in each of two seeds: characters 1.665/1.669 →
# 1.644/1.664 nats/char, the BPE recipe 1.526/1.527 → 1.517/1.512 (docs/block-diffusion-notebook.md, "2026-12-07
# (ninth session)"). Budgets of 5M tokens and more (a faster machine, a longer budget, a GPU) were not measured
# and keep 16.
SMALL_BATCH_TOKENS = 5.0e6
SMALL_BATCH_EXTRA: dict[str, list[str]] = {"bd3": ["train.batch_size=8"]}
# A short budget: the tokens it buys train a block model for only a few hundred steps. That is an AVX2-only CPU
# in fp32 (an AMD EPYC held to AVX2, simulated, bought 1.3–2.1M in 10 minutes; a real AVX2 machine trains about a
# third slower); a CPU with bf16 units buys ~4M, an Intel Xeon in fp32 ~2.3M. Paired runs of that length (3 × 192, fp32;
# docs/block-diffusion-notebook.md, "eighth session") did better with batch 8 (−0.017 and −0.037 nats/char at equal
# tokens with BPE tokens, −0.046 with characters, with the floor below) and a cosine that ends at 0.3 of the peak
# (the EMA then does the annealing: −0.012 at 420 steps); at ~1,200 steps with characters the higher floor cost
# 0.006, so longer budgets keep the preset's floor.
SHORT_BUDGET_TOKENS = 2.0e6
SHORT_BUDGET_EXTRA: dict[str, list[str]] = {"bd3": ["train.min_lr_ratio=0.3"]}
# The fields SIZE_TABLE sets (model.n_layer, model.d_model): when key=value sets all of them, the
# probe's answer would be discarded, so it does not run.
SIZE_FIELDS = tuple(dict.fromkeys(item.split("=")[0] for _, _, row in SIZE_TABLE for item in row))


@dataclass
class SizeChoice:
    name: str
    overrides: list[str]
    tokens_per_s: float
    budget_s: float
    probe_s: float
    dtype: str = "float32"
    objective: str = "mdlm"

    @property
    def tokens(self) -> float:
        """Tokens of the 4 × 256 model the budget trains with this objective."""
        efficiency = PROBE_EFFICIENCY.get(self.dtype, 1.0) / STEP_COST.get(self.objective, 1.0)
        return self.tokens_per_s * self.budget_s * efficiency

    @property
    def small_batch(self) -> bool:
        """A budget of a few thousand steps or fewer, for an objective with a smaller batch measured for one."""
        return self.objective in SMALL_BATCH_EXTRA and self.tokens < SMALL_BATCH_TOKENS

    @property
    def short(self) -> bool:
        """A budget of a few hundred steps, for an objective with settings measured for one."""
        return self.objective in SHORT_BUDGET_EXTRA and self.tokens < SHORT_BUDGET_TOKENS

    def reason(self, dtype: str) -> str:
        settings = " ".join(self.overrides) or "the preset as it is"
        cost = STEP_COST.get(self.objective)
        cost_note = f" (a {self.objective} step costs ~{cost:g}× the probe's)" if cost else ""
        budget_note = ""
        if self.small_batch:
            budget_note = f"; a block run of under {SMALL_BATCH_TOKENS / 1e6:.0f}M tokens: more, smaller steps"
        if self.short:
            budget_note += (f"; a short budget (under {SHORT_BUDGET_TOKENS / 1e6:.1f}M tokens): a higher floor for "
                            "the learning rate")
        if budget_note:
            budget_note += " (docs/training.md, 'A short budget')"
        return (f"budget probe: {self.tokens_per_s:,.0f} tokens/s ({dtype}, measured in {self.probe_s:.1f} s) → "
                f"~{self.tokens / 1e6:.1f}M tokens of the 4×256 model in {self.budget_s:,.0f} s{cost_note} → "
                f"size {self.name} "
                f"({settings}), the best measured for such a budget (docs/study.md, 'Size for the budget "
                f"(equal tokens)'){budget_note}")


def choose_size(tokens_per_s: float, budget_s: float, dtype: str = "float32", objective: str = "mdlm") -> SizeChoice:
    """The SIZE_TABLE row for the tokens a budget buys at a measured speed (a pure function); the AR
    twin gets the same network plus its row's AR_EXTRA."""
    choice = SizeChoice(SIZE_TABLE[0][1], list(SIZE_TABLE[0][2]), tokens_per_s, budget_s, 0.0, dtype, objective)
    for fewest, row_name, row_overrides in SIZE_TABLE:
        if choice.tokens >= fewest:
            choice.name, choice.overrides = row_name, list(row_overrides)
    if objective == "ar":
        choice.overrides += AR_EXTRA.get(choice.name, [])
    if choice.small_batch:
        choice.overrides += SMALL_BATCH_EXTRA[objective]
    if choice.short:
        choice.overrides += SHORT_BUDGET_EXTRA[objective]
    return choice


def probe_tokens_per_second(cfg: RunConfig, steps: int = 3, dtype: str | None = None) -> tuple[float, float, str]:
    """(tokens/s of eager training steps of cfg's model, seconds the probe took, dtype name); `dtype`
    ('bf16' or 'fp32') instead of cfg's train.dtype."""
    import torch

    from dlm.model.transformer import Transformer
    from dlm.objectives import make_objective
    from dlm.runtime import autocast, pick_device, pick_dtype
    from dlm.tokenizers import CharTokenizer
    from dlm.train.optim import build_optimizer

    started = time.perf_counter()
    device = pick_device(cfg.train.device)
    dtype = pick_dtype(dtype or cfg.train.dtype, device)
    tokenizer = CharTokenizer([chr(c) for c in range(32, 97)])  # 65 symbols, like Tiny Shakespeare
    model_cfg = apply_overrides(cfg, [f"model.vocab_size={tokenizer.vocab_size}"]).model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Transformer(model_cfg).to(device)
        optimizer = build_optimizer(cfg.train.optimizer, model, 1e-4, 0.0, (0.9, 0.95), ns_dtype=dtype)
        # Always MDLM's steps: a run and its AR twin on one machine get the same size (choose_size scales
        # the tokens by STEP_COST for objectives whose step costs more).
        objective = make_objective("mdlm", "linear", tokenizer)
        batch = cfg.train.batch_size // cfg.train.grad_accum
        x = torch.randint(0, tokenizer.n_real_tokens, (batch, model_cfg.block_size), device=device)
        noise = torch.Generator().manual_seed(0)

        def step() -> None:
            with autocast(device, dtype):
                out = objective(model, x, noise)
            (out.nll_sum / out.n_tokens).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        step()  # warm-up: allocations, first-call dispatch
        times = []
        for _ in range(steps):
            timed = time.perf_counter()
            step()
            times.append(time.perf_counter() - timed)
        per_step = sorted(times)[len(times) // 2]  # the median: one step slowed by another process moves it less
    tokens_per_step = cfg.train.batch_size * model_cfg.block_size
    return tokens_per_step / per_step, time.perf_counter() - started, str(dtype).removeprefix("torch.")


def given_fields(cfg: RunConfig, user_overrides: list[str]) -> dict[str, str]:
    """The 'section.field' names the user's key=value set, each with the item that set it."""
    return {".".join(parse_override(cfg, item)[:2]): item for item in user_overrides}


def probe_skip_reason(cfg: RunConfig, user_overrides: list[str]) -> str | None:
    """Why the probe would be pointless for this config (None: run it). cfg has the overrides applied."""
    fields = " and ".join(SIZE_FIELDS)
    if cfg.model.backbone:
        return (f"budget probe skipped: model.backbone={cfg.model.backbone} is the network, and the probe sizes "
                f"dlm's own Transformer (a backbone ignores {fields})")
    given = given_fields(cfg, user_overrides)
    if all(key in given for key in SIZE_FIELDS):
        return (f"budget probe skipped: {fields} are given, and they are all it would choose (the preset runs "
                "as it is at that size)")
    return None


def dtypes_to_try(cfg: RunConfig) -> list[str]:
    """Both precisions where the choice is open (train.dtype=auto on a CPU with bf16 instructions), else none."""
    from dlm.runtime import cpu_has_bf16, pick_device

    if cfg.train.dtype != "auto" or pick_device(cfg.train.device).type != "cpu" or not cpu_has_bf16():
        return []
    return ["bf16", "fp32"]


def auto_size(cfg: RunConfig, user_overrides: list[str]) -> tuple[RunConfig, SizeChoice, str]:
    """cfg with the probe's choice applied, then the user's key=value again (theirs win). Where the precision
    is open, the probe times both and the faster one trains: bf16 instructions do not make bf16 faster on
    every CPU (an Intel Xeon with AVX512-BF16 and no AMX trained 19 % faster in fp32; docs/training.md)."""
    timed = {name: probe_tokens_per_second(cfg, dtype=name) for name in dtypes_to_try(cfg)}
    if timed:
        fastest = max(timed, key=lambda name: timed[name][0])
        speed, _, dtype = timed[fastest]
        probe_s = sum(seconds for _, seconds, _ in timed.values())
    else:
        speed, probe_s, dtype = probe_tokens_per_second(cfg)
    choice = choose_size(speed, cfg.train.max_time, dtype, cfg.train.objective)
    choice.probe_s = probe_s
    given = given_fields(cfg, user_overrides)
    kept_batch = "train.grad_accum" in given and "train.batch_size" not in given
    if kept_batch:  # the user's micro-batches divide the preset's batch: keep that batch
        choice.overrides = [item for item in choice.overrides if not item.startswith("train.batch_size=")]
    reason = choice.reason(dtype)
    if kept_batch and choice.small_batch:
        reason += " (not the batch: train.grad_accum is given, for the preset's)"
    yours = [given[field] for field in (item.split("=")[0] for item in choice.overrides) if field in given]
    if yours:  # the line must not claim a setting the run does not use
        reason += f"; your key=value wins: {' '.join(yours)}"
    if timed:
        choice.overrides.append(f"train.dtype={fastest}")
        others = ", ".join(f"{timed[name][0]:,.0f} in {timed[name][2]}" for name in timed if name != fastest)
        reason += f"; {dtype} because it was the faster here ({others})"
    sized = apply_overrides(cfg, [*choice.overrides, *user_overrides])
    sized.train.auto_size = reason
    return sized, choice, reason
