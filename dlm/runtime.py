"""Device, dtype and compile choices, made once and reported."""

from __future__ import annotations

import contextlib
import logging
import shutil

import torch


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from dlm.errors import DlmError

        raise DlmError("train.device=cuda but no CUDA GPU is visible; use train.device=cpu")
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """True on CPUs with bf16 matrix instructions (AVX512-BF16 or AMX), where bf16 is usually faster (not always:
    dlm.sizing times both)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "bf16":
        return torch.bfloat16
    if name == "fp32":
        return torch.float32
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_has_bf16() else torch.float32


def pick_inference_dtype(name: str, device: torch.device) -> torch.dtype:
    """Sampling's precision: as training's, except that 'auto' on a CPU is fp32. Writing one sample at a time,
    a CPU's passes are a few rows each, and bf16 adds casts and oneDNN's fixed cost to every small matmul: the AR
    twin wrote 2.5× (AMD EPYC) and 1.8× (Intel Xeon) as many characters per second in fp32 as in bf16 at batch 1,
    the block sampler 1.6× on the Xeon (docs/block-diffusion.md)."""
    if name == "auto" and device.type == "cpu":
        return torch.float32
    return pick_dtype(name, device)


def autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def should_compile(setting: str, device: torch.device) -> bool:
    if setting == "no":
        return False
    if setting == "yes":
        return True
    # Inductor needs a C++ compiler on CPU (and Triton on GPU, which ships with CUDA torch).
    return device.type == "cuda" or shutil.which("g++") is not None or shutil.which("c++") is not None


def compile_model(model: torch.nn.Module, setting: str, device: torch.device) -> torch.nn.Module:
    """`model` torch.compile'd when `setting` and the machine allow it (see should_compile)."""
    if not should_compile(setting, device):
        return model
    quiet_cuda_probe()
    if device.type == "cpu":
        pin_cpu_vector_width()
    return torch.compile(model)  # type: ignore[return-value]


def pin_cpu_vector_width() -> None:
    """Make the vector width of compiled CPU code part of the key of torch's compiled-code cache.

    Inductor writes C++ for the vector width it picks (AVX-512's 16 floats, AVX2's 8; ATEN_CPU_CAPABILITY
    chooses too) but, in torch 2.13, keys its on-disk cache without it: code written for one width and
    read back under another either corrupts the heap (abort: "malloc(): corrupted top size") or silently
    computes wrong numbers, as when dlm's AVX2 simulation (docs/benchmarks.md) follows a plain run.
    Setting the width explicitly puts it in the key, whatever chose it; it is the width inductor would
    pick anyway (tests/test_runtime.py)."""
    import torch._inductor.config as inductor_config
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    if inductor_config.cpp.simdlen is None:
        inductor_config.cpp.simdlen = pick_vec_isa().bit_width()  # 0: no vector code (ATEN_CPU_CAPABILITY=default)


def quiet_cuda_probe() -> None:
    """Silence torch's "No CUDA runtime is found, using CUDA_HOME=..." warning, and nothing else.

    A CUDA build of torch (the default wheel on Linux) on a machine without a GPU logs it once when
    inductor imports torch.utils.cpp_extension to compile for the CPU: the CUDA toolkit folder
    exists but no GPU does. That is expected on such a machine and says nothing about the run."""
    logger = logging.getLogger("torch.utils.cpp_extension")  # the same object once torch imports it
    if _not_the_cuda_probe not in logger.filters:
        logger.addFilter(_not_the_cuda_probe)


def _not_the_cuda_probe(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("No CUDA runtime is found")
