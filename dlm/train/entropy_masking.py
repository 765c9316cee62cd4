"""Per-token entropies for entropy-weighted masking (microDLM), computed once by an AR twin and cached.

A token's entropy is that of the AR twin's predictive distribution at its position, given at
least half a context of text before it (windows of the context length, overlapping by half). The
values are written beside the prepared corpus as float16 and reused by every run that names the
same AR checkpoint. The masking itself is dlm.diffusion.process.entropy_mask_scale.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from dlm.data.shards import PreparedCorpus
from dlm.errors import DlmError
from dlm.inference import load
from dlm.io import atomic_write_json
from dlm.progress import track
from dlm.runtime import autocast


@torch.no_grad()
def position_entropies(model: torch.nn.Module, tokens: np.ndarray, bos_id: int, block_size: int,
                       device: torch.device, dtype: torch.dtype, batch_size: int = 32,
                       progress: bool = False) -> np.ndarray:
    """(N,) float32: the entropy (nats) of a causal model's prediction of each token of `tokens`."""
    n, half = len(tokens), block_size // 2
    starts = list(range(0, max(n - block_size, 0) + 1, half))
    if starts[-1] + block_size < n:
        starts.append(n - block_size)
    out = np.zeros(n, dtype=np.float32)
    filled = 0  # positions [0, filled) are written
    model.eval()
    for i in track(range(0, len(starts), batch_size), desc="token entropies", unit="batch", enabled=progress,
                  leave=False):
        chunk = starts[i:i + batch_size]
        x = torch.from_numpy(np.stack([tokens[s:s + block_size] for s in chunk]).astype(np.int64)).to(device)
        inputs = torch.cat((torch.full_like(x[:, :1], bos_id), x[:, :-1]), dim=1)
        with autocast(device, dtype):
            logits = model(inputs).float()  # (B, T, V)
        entropy = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1).cpu().numpy()  # (B, T)
        for row, s in enumerate(chunk):
            # A later window's first half lacks context (the previous window had it); the last
            # window, moved back to end at N, only fills what is left.
            first = max(filled, s + (half if s else 0))
            out[first:s + block_size] = entropy[row, first - s:]
            filled = s + block_size
    return out


def cached_entropies(ar_run: str, corpus: PreparedCorpus, device: torch.device, dtype: torch.dtype,
                     progress: bool = False) -> tuple[np.ndarray, float]:
    """(entropies of the train split as a read-only memmap, their mean), computed on first use."""
    pipe = load(ar_run, device=device.type, dtype="fp32" if dtype == torch.float32 else "auto")
    if not pipe.is_autoregressive:
        raise DlmError(f"diffusion.entropy_run={ar_run} is a diffusion run; it must be an AR twin (--objective ar)")
    if pipe.tokenizer.to_json() != corpus.tokenizer.to_json():
        raise DlmError(f"diffusion.entropy_run={ar_run} uses another tokenizer; train it on the same corpus")
    manifest = json.loads((pipe.checkpoint / "manifest.json").read_text())
    key = manifest["files"][f"{'ema' if pipe.weights == 'ema' else 'model'}.safetensors"]["sha256"][:16]
    path, meta_path = corpus.folder / f"entropy-{key}.f16", corpus.folder / f"entropy-{key}.json"
    if not meta_path.is_file():
        entropies = position_entropies(pipe.model, corpus.split("train"), pipe.tokenizer.bos_id,
                                       pipe.model.cfg.block_size, pipe.device, pipe.dtype, progress=progress)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        entropies.astype(np.float16).tofile(tmp)
        os.replace(tmp, path)
        atomic_write_json(meta_path, {"ar_run": str(ar_run), "checkpoint": str(pipe.checkpoint),
                                      "mean": float(entropies.mean()), "tokens": len(entropies)})
    meta = json.loads(meta_path.read_text())
    return np.memmap(path, dtype=np.float16, mode="r"), meta["mean"]
