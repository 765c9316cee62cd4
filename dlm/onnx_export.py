"""`dlm export --onnx`: the network as ONNX, checked against PyTorch, and a page that samples in the browser.

    dlm export runs/mdlm --onnx exports/mdlm-onnx [--web [--ort-dir node_modules/onnxruntime-web/dist]]

model.onnx maps input_ids (batch, length) int64 → logits (batch, length, vocab) float32, with
dynamic batch and length (up to the context). A block-diffusion (bd3) run exports under its
block-causal mask (config.json's diffusion_block), and the page decodes it block by block. The
export is run through onnxruntime on several shapes and compared with PyTorch's logits; the
largest difference is reported (and the export refused beyond 1e-3). RMSNorm is written out as its
formula, which every ONNX opset has.

--web adds index.html and config.json (vocabulary, reserved ids, context): a static page that
runs the confidence sampler in JavaScript with onnxruntime-web — no model on any server. Serve the
folder over HTTP (`python -m http.server -d FOLDER`); browsers refuse model files opened from disk.
onnxruntime-web comes from --ort-dir (its dist folder, copied next to the page) or, without it,
from the jsDelivr CDN. The tokenizer runs in JavaScript: characters, or dlm's byte-level BPE (bpe.js,
written beside the page, with the vocabulary and merges in config.json).
"""

from __future__ import annotations

import contextlib
import shutil
import time
import warnings
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dlm.errors import DlmError
from dlm.inference import load
from dlm.io import atomic_write_json, atomic_write_text

TOLERANCE = 1e-3
# What the page needs from onnxruntime-web's dist folder: the script and its single-threaded-capable wasm.
ORT_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
# Tokenizers the page runs in JavaScript: characters, and byte-level BPE (static/bpe.js).
PAGE_TOKENIZERS = ("char", "bpe")


class LogitsOnly(torch.nn.Module):
    """input_ids → fp32 logits; for a block-diffusion model (`block` > 0) under its block-causal
    mask, blocks cut at multiples of `block` from the first position (how it was trained), so the
    export run over [finished blocks | the current block] gives the sampler's logits."""

    def __init__(self, model: torch.nn.Module, block: int = 0):
        super().__init__()
        self.model, self.block = model, block

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if not self.block:
            return self.model(input_ids).float()
        cols = torch.arange(input_ids.shape[1], device=input_ids.device)
        blocks = cols // self.block
        allowed = blocks[None, :] <= blocks[:, None]
        if getattr(self.model.cfg, "clean_causal", False):  # finished blocks token-causal, the last one whole
            allowed = allowed & ((cols[None, :] <= cols[:, None]) | (blocks[:, None] == blocks[-1]))
        return self.model(input_ids, attn_mask=allowed).float()


@contextlib.contextmanager
def rms_norm_as_formula():
    """F.rms_norm written out (x·rsqrt(mean x² + ε)·w) while exporting: older opsets lack the op."""
    real = F.rms_norm

    def formula(x, shape, weight=None, eps=None):
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + (eps if eps is not None else 1e-6))
        return y * weight if weight is not None else y

    F.rms_norm = formula
    try:
        yield
    finally:
        F.rms_norm = real


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise DlmError("checking an ONNX export needs onnxruntime, which is not installed; "
                       "pip install 'dlm[onnx]'") from None
    return onnxruntime


def export_onnx(run: str | Path, out: str | Path, weights: str = "auto", web: bool = False,
                ort_dir: str | Path | None = None, opset: int = 17) -> dict:
    pipe = load(run, device="cpu", dtype="fp32", weights=weights)
    if getattr(pipe.model.cfg, "backbone", ""):
        raise DlmError("ONNX export covers dlm's own Transformer; a transformers backbone exports with "
                       "transformers' own tools (optimum)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = LogitsOnly(pipe.model, pipe.diffusion_block).eval()
    pipe.model.fp32_logits = False
    real = torch.tensor(sorted(set(range(pipe.tokenizer.vocab_size)) - set(pipe.tokenizer.reserved_ids)))
    example = real[torch.randint(0, len(real), (2, min(16, pipe.model.cfg.block_size)))]
    path = out / "model.onnx"
    with torch.no_grad(), rms_norm_as_formula(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shape-dependent Python ints
        torch.onnx.export(model, (example,), str(path), input_names=["input_ids"], output_names=["logits"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "length"}, "logits": {0: "batch", 1: "length"}},
                          opset_version=opset, dynamo=False)
    report = check_against_torch(path, model, real, pipe.model.cfg.block_size)
    if report["max_abs_diff"] > TOLERANCE:
        raise DlmError(f"the ONNX export differs from PyTorch by {report['max_abs_diff']:.2e} (> {TOLERANCE}); "
                       "please report it")
    config = {"objective": pipe.objective, "diffusion_block": pipe.diffusion_block,
              "block_size": pipe.model.cfg.block_size,
              "vocab_size": pipe.tokenizer.vocab_size, "tokenizer": pipe.tokenizer.kind,
              "mask_id": pipe.tokenizer.mask_id, "pad_id": pipe.tokenizer.pad_id, "bos_id": pipe.tokenizer.bos_id,
              "eos_id": pipe.tokenizer.eos_id, "reserved_ids": pipe.tokenizer.reserved_ids, "source": str(run)}
    if pipe.tokenizer.kind == "char":
        config["vocab"] = list(pipe.tokenizer.itos)
    elif pipe.tokenizer.kind == "bpe":  # the page's bpe.js encodes with these
        config["vocab"], config["merges"] = pipe.tokenizer.vocab_and_merges()
    atomic_write_json(out / "config.json", config)
    pipe.tokenizer.save(out / "dlm_tokenizer.json")
    if web:
        if pipe.tokenizer.kind not in PAGE_TOKENIZERS or pipe.is_autoregressive:
            what = "autoregressive" if pipe.is_autoregressive else f"tokenized by {pipe.tokenizer.kind}"
            raise DlmError(f"the browser page samples diffusion runs with character or BPE tokens; this run is {what} "
                           "(model.onnx is written: drop --web, or export a diffusion run of dlm's tokenizers)")
        static = resources.files("dlm.serve").joinpath("static")
        atomic_write_text(out / "index.html", static.joinpath("onnx.html").read_text(encoding="utf-8"))
        if pipe.tokenizer.kind == "bpe":
            atomic_write_text(out / "bpe.js", static.joinpath("bpe.js").read_text(encoding="utf-8"))
        if ort_dir is not None:
            ort_dir = Path(ort_dir)
            if not (ort_dir / ORT_FILES[0]).is_file():
                raise DlmError(f"--ort-dir {ort_dir} has no {ORT_FILES[0]}; pass onnxruntime-web's dist folder")
            (out / "ort").mkdir(exist_ok=True)
            for name in ORT_FILES:
                if (ort_dir / name).is_file():
                    shutil.copy(ort_dir / name, out / "ort" / name)
    return {"path": str(path), **report}


def check_against_torch(path: Path, model: torch.nn.Module, real_ids: torch.Tensor, block_size: int) -> dict:
    """Largest |logit difference| between onnxruntime and PyTorch over a few shapes, and both speeds."""
    ort = import_onnxruntime()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    shapes = [(1, min(8, block_size)), (3, block_size), (2, max(1, block_size // 2 + 1))]
    worst, generator = 0.0, torch.Generator().manual_seed(0)
    for shape in shapes:
        ids = real_ids[torch.randint(0, len(real_ids), shape, generator=generator)]
        onnx_logits = session.run(None, {"input_ids": ids.numpy()})[0]
        with torch.no_grad():
            torch_logits = model(ids).numpy()
        worst = max(worst, float(np.abs(onnx_logits - torch_logits).max()))
    timing_ids = real_ids[torch.randint(0, len(real_ids), (1, block_size), generator=generator)]
    return {"max_abs_diff": worst, "checked": ", ".join(f"{b}×{t}" for b, t in shapes),
            "onnxruntime_ms": _median_ms(lambda: session.run(None, {"input_ids": timing_ids.numpy()})),
            "torch_ms": _median_ms(lambda: model(timing_ids)), "timed_shape": f"1×{block_size}"}


def _median_ms(call, repeats: int = 20) -> float:
    times = []
    with torch.no_grad():
        call()
        for _ in range(repeats):
            started = time.perf_counter()
            call()
            times.append((time.perf_counter() - started) * 1000)
    return float(np.median(times))
