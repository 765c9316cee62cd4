"""Training throughput (tokens/s) and peak memory per preset, dtype and compile setting.

Each configuration runs in its own subprocess (clean compile caches, its own peak RSS) and times
full optimizer steps of the real training path: dlm's model, objective, the preset's optimizer
(train.optimizer with its lr, weight decay and betas, built as the trainer builds it; each row
records which, e.g. "Muon + fused AdamW"), its gradient clipping, autocast and torch.compile, on
random token windows (throughput does not depend on the text).

    python bench/train_throughput.py                       # presets × {bf16, fp32} × {compile, eager}
    python bench/train_throughput.py --presets shakespeare-char --dtypes bf16 --compile yes
    python bench/train_throughput.py --presets shakespeare-char-cpu --objective bd3   # block diffusion
    python bench/train_throughput.py --presets shakespeare-char-cpu --objective bd3 --vocab 2048 \
        --batch-size 16 --override model.tie_weights=true --override model.n_layer=3   # the BPE recipe

Prints a table and writes JSON (default bench/results/train_throughput.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from labels import optimizer_label
from machine import describe_cpu  # noqa: E402 (bench/ is on the path when run)


def worker(preset: str, objective: str, dtype_name: str, compile_setting: str, steps: int, warmup: int,
           batch_size: int | None, overrides: list[str] | None = None, vocab: int = 0) -> dict:
    import torch

    from dlm.config import apply_overrides, parse_t_range
    from dlm.model import Transformer
    from dlm.objectives import make_objective
    from dlm.presets import get_preset
    from dlm.runtime import autocast, compile_model, pick_device, pick_dtype
    from dlm.tokenizers import CharTokenizer
    from dlm.train.optim import build_optimizer

    cfg = apply_overrides(get_preset(preset), overrides or [])
    tokenizer = CharTokenizer([chr(c) for c in range(32, 97)])  # 65 characters, like Tiny Shakespeare
    if vocab:  # a BPE run's vocabulary size (the speed depends on the size alone)
        n_special = tokenizer.vocab_size - 65
        tokenizer = CharTokenizer([chr(c) for c in range(256, 256 + vocab - n_special)])
    cfg.model.vocab_size, cfg.model.causal = tokenizer.vocab_size, objective == "ar"
    if objective != "bd3":  # the next-token clean copy is block diffusion's alone
        cfg.model.clean_causal, cfg.diffusion.clean_ar_weight = False, 0.0
    batch = batch_size or cfg.train.batch_size
    device = pick_device("auto")
    dtype = pick_dtype(dtype_name, device)
    torch.manual_seed(0)
    model = Transformer(cfg.model).to(device)
    tc = cfg.train
    optimizer = build_optimizer(tc.optimizer, model, tc.lr, tc.weight_decay, (tc.beta1, tc.beta2), ns_dtype=dtype)
    dc = cfg.diffusion  # the preset's objective options, as the trainer passes them
    loss_fn = make_objective(objective, dc.schedule, tokenizer, edit_prob=dc.edit_prob, antithetic=dc.antithetic,
                             edit_weight=dc.edit_weight, prompt_prob=dc.prompt_prob, weighting=dc.weighting,
                             weight_cap=dc.weight_cap, ar_input_mask=cfg.train.ar_input_mask,
                             block_size=dc.block_size, t_range=parse_t_range(dc.t_range),
                             noisy_copies=dc.noisy_copies, clean_ar_weight=dc.clean_ar_weight,
                             block_noise=dc.block_noise)
    compiled = compile_model(model, compile_setting, device)
    noise = torch.Generator().manual_seed(0)
    x = torch.randint(0, tokenizer.n_real_tokens, (batch, cfg.model.block_size), device=device)

    def step() -> None:
        with autocast(device, dtype):
            out = loss_fn(compiled, x, noise)
        (out.nll_sum / out.n_tokens).backward()
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    sync()
    warmup_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    times.sort()
    median = times[len(times) // 2]
    tokens = batch * cfg.model.block_size
    result = {
        "preset": preset, "objective": objective, "dtype": str(dtype).removeprefix("torch."),
        "optimizer": optimizer_label(optimizer),
        "compile": compiled is not model, "device": str(device), "params": model.num_params(),
        "batch_size": batch, "block_size": cfg.model.block_size, "tokens_per_step": tokens,
        "median_step_s": median, "tokens_per_s": tokens / median, "timed_steps": steps,
        "warmup_steps": warmup, "warmup_s": warmup_s, "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        result["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
        result["gpu"] = torch.cuda.get_device_name()
    else:  # ru_maxrss is KiB on Linux: the whole process's peak resident memory
        result["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["shakespeare-char", "shakespeare-char-cpu"])
    parser.add_argument("--objective", default="mdlm", choices=("mdlm", "bd3", "ar"),
                        help="mdlm (default), bd3 (block diffusion, the preset's block size and options) or ar")
    parser.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=("bf16", "fp32"))
    parser.add_argument("--compile", nargs="+", default=["yes", "no"], choices=("yes", "no"))
    parser.add_argument("--steps", type=int, default=6, help="timed steps (the median is reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    parser.add_argument("--batch-size", type=int, default=None, help="override the preset's batch size")
    parser.add_argument("--vocab", type=int, default=0,
                        help="vocabulary size (default: 65 characters and dlm's specials; 2048: the BPE recipe's)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="config overrides for every preset (e.g. model.n_layer=6)")
    parser.add_argument("--json", default="bench/results/train_throughput.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        preset, dtype, comp = args.worker.split(",")
        print(json.dumps(worker(preset, args.objective, dtype, comp, args.steps, args.warmup, args.batch_size,
                                args.override, args.vocab)))
        return

    results = []
    print(f"{'preset':22s} {'dtype':9s} {'compile':7s} {'optimizer':18s} {'params':>8s} {'batch×T':>9s} "
          f"{'tokens/s':>9s} {'peak MB':>8s}")
    for preset in args.presets:
        for dtype in args.dtypes:
            for comp in args.compile:
                cmd = [sys.executable, __file__, "--worker", f"{preset},{dtype},{comp}", "--objective",
                       args.objective, "--steps", str(args.steps), "--warmup", str(args.warmup)]
                if args.batch_size:
                    cmd += ["--batch-size", str(args.batch_size)]
                cmd += [f"--override={o}" for o in args.override] + ["--vocab", str(args.vocab)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    print(f"{preset} {dtype} compile={comp} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                results.append(r)
                shape = f"{r['batch_size']:>4d}×{r['block_size']:<4d}"
                print(f"{preset:22s} {r['dtype']:9s} {str(r['compile']):7s} {r['optimizer']:18s} "
                      f"{r['params'] / 1e6:7.2f}M {shape} {r['tokens_per_s']:9,.0f} {r['peak_memory_mb']:8.0f}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    import torch

    meta = {"command": " ".join([Path(sys.executable).name] + sys.argv), "torch": torch.__version__,
            "machine": platform.machine(), "processor": describe_cpu(), "cpus": os.cpu_count(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
