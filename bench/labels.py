"""What a bench's report says about the settings that ran, read from its own results.

A label typed beside a table ("temperature 1", "fused AdamW", "EMA weights") goes stale the day a
default changes; these build it from what the rows and run configs recorded instead.
"""

from __future__ import annotations


def unit_of(tokenizer_kind: str) -> str:
    """What one position of the canvas is: a character for the char tokenizer, else a token."""
    return "character" if tokenizer_kind == "char" else "token"


def temperature_label(rows: list[dict]) -> str:
    """'temperature 0.8 (the AR twin: 1)' from the temperatures evaluate_generation recorded per row
    (rows without one, from reports written before it was recorded, are left out)."""
    def values(autoregressive: bool) -> list[str]:
        found = {r["temperature"] for r in rows
                 if "temperature" in r and (r.get("sampler") == "autoregressive") == autoregressive}
        return [f"{t:g}" for t in sorted(found)]

    diffusion, ar = values(False), values(True)
    if not diffusion and not ar:
        return "temperature not recorded"
    if not diffusion:
        return f"temperature {', '.join(ar)}"
    label = f"temperature {diffusion[0]}" if len(diffusion) == 1 else f"temperatures {', '.join(diffusion)}"
    if ar and ar != diffusion:
        label += f" (the AR twin: {', '.join(ar)})"
    return label


def network_dtype(dtype: str) -> str:
    """The dtype the network ran in (`Pipeline.dtype`; dlm.load computes the logits in fp32)."""
    if dtype == "bfloat16":
        return "bf16 network with fp32 logits"
    return f"{dtype} network"


def weights_label(weights: dict[str, str]) -> str | None:
    """'EMA weights' / 'raw weights' from each model's Pipeline.weights (None when not recorded)."""
    if not weights:
        return None
    names = {"ema": "EMA weights", "raw": "raw weights"}
    if len(set(weights.values())) == 1:
        return names[next(iter(weights.values()))]
    return ", ".join(f"{model}: {names[w]}" for model, w in weights.items())


def optimizer_label(optimizer) -> str:
    """'Muon + fused AdamW' / 'fused AdamW' / 'AdamW (foreach)' for an optimizer dlm's build_optimizer made."""
    adamw = getattr(optimizer, "adamw", optimizer)  # MuonWithAdamW keeps AdamW for the rest
    kind = "fused AdamW" if adamw.defaults.get("fused") else (
        "AdamW (foreach)" if adamw.defaults.get("foreach") else "AdamW")
    return f"Muon + {kind}" if hasattr(optimizer, "muon") else kind
