"""The training loop: gradient accumulation, bf16 autocast, clipping, EMA, a NaN guard, periodic
validation, JSONL logs, atomic checkpoints, exact resume, DDP under torchrun, and a graceful stop
on a time budget or a signal."""

from __future__ import annotations

import contextlib
import random
import resource
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dlm.config import RunConfig
from dlm.data.loader import RandomWindows
from dlm.data.shards import prepare_corpus
from dlm.errors import DlmError
from dlm.io import atomic_write_json
from dlm.model import Transformer
from dlm.objectives import make_objective
from dlm.runtime import autocast, pick_device, pick_dtype, should_compile
from dlm.tokenizers import load_tokenizer
from dlm.train.checkpoint import (
    clone_state,
    latest_checkpoint,
    load_model_weights,
    load_trainer_state,
    model_state,
    save_checkpoint,
)
from dlm.train.distributed import (
    all_reduce_sum,
    barrier,
    cleanup,
    full_state_dicts,
    gradient_sync,
    init_distributed,
    load_full_optimizer_state,
    optimizer_state_by_index,
    optimizer_state_by_name,
    shard_model,
    wrap_model,
)
from dlm.train.ema import EMA
from dlm.train.logging import RunLogger
from dlm.train.optim import lr_at, make_optimizer


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    last_loss: float
    val_loss: float | None
    stopped_by: str


class StopFlag:
    """SIGTERM, SIGINT and SIGUSR1 ask the loop to save and exit at the next step boundary;
    a second SIGINT aborts at once."""

    def __init__(self):
        self.reason: str | None = None
        self._previous: dict = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGUSR1", None)):
            if sig is not None:
                try:
                    self._previous[sig] = signal.signal(sig, self._handle)
                except ValueError:  # not the main thread (e.g. some test runners)
                    pass
        return self

    def _handle(self, signum, frame):
        if self.reason is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.reason = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def rng_state() -> dict:
    # Plain Python types only: trainer_state.pt is loaded with weights_only=True, which refuses
    # numpy arrays (np.random.get_state() holds one).
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = (name, keys.tolist(), int(pos), int(has_gauss), float(cached))
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def noise_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """Masking noise is a pure function of (seed, step, micro-batch, rank): nothing to save, and a
    resumed run draws exactly the noise the uninterrupted run would have drawn."""
    return (seed * 1_000_003 + step * 4_099 + micro * 131 + rank) % (2**63 - 1)


@torch.no_grad()
def quick_val_loss(model, objective, val_tokens: np.ndarray, block_size: int, batch_size: int,
                   n_batches: int, device, dtype) -> float:
    """A fast, fixed-seed estimate for monitoring; `dlm eval` gives the full figure with errors."""
    was_training = model.training
    model.eval()
    windows = RandomWindows(val_tokens, block_size, seed=0, device=device)
    noise = torch.Generator().manual_seed(0)
    total, count = 0.0, 0
    for _ in range(n_batches):
        with autocast(device, dtype):
            out = objective(model, windows.next_batch(batch_size), noise)
        total += out.nll_sum.item()
        count += out.n_tokens
    model.train(was_training)
    return total / count


def train(cfg: RunConfig, run_dir: Path, resume: bool = False, quiet: bool = False) -> TrainResult:
    cfg.validate()
    run_dir = Path(run_dir)
    tc = cfg.train
    dist_info, device_name = init_distributed(tc.device)
    quiet = quiet or not dist_info.is_main
    if tc.batch_size % (tc.grad_accum * dist_info.world_size):
        raise DlmError(f"train.batch_size={tc.batch_size} must be a multiple of grad_accum × ranks "
                       f"= {tc.grad_accum * dist_info.world_size}")
    ckpt = latest_checkpoint(run_dir, quiet=not dist_info.is_main) if resume else None
    if not resume and (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
        raise DlmError(f"{run_dir} already holds a training run; pass --resume to continue it "
                       "or choose a new --out folder")
    if resume and ckpt is None and not quiet:
        print(f"dlm: no intact checkpoint in {run_dir}; starting from step 0")

    device = pick_device(device_name)
    dtype = pick_dtype(tc.dtype, device)
    torch.manual_seed(tc.seed)
    random.seed(tc.seed)
    np.random.seed(tc.seed)

    # A resumed run keeps its own tokenizer, whatever the corpus cache holds now.
    saved_tokenizer = load_tokenizer(run_dir / "tokenizer.json") if ckpt is not None else None
    if dist_info.is_main:  # tokenize once, then the other ranks read the cache
        corpus = prepare_corpus(cfg.data.data, cfg.data.tokenizer, cfg.data.vocab_size, cfg.data.val_fraction,
                                tokenizer_override=saved_tokenizer, progress=not quiet)
    barrier(dist_info)
    if not dist_info.is_main:
        corpus = prepare_corpus(cfg.data.data, cfg.data.tokenizer, cfg.data.vocab_size, cfg.data.val_fraction,
                                tokenizer_override=saved_tokenizer)
    tokenizer = corpus.tokenizer
    cfg.model.vocab_size = tokenizer.vocab_size
    cfg.model.causal = tc.objective == "ar"
    fsdp = tc.fsdp and dist_info.enabled
    model = Transformer(cfg.model).to(device)
    ema_start = None
    if ckpt is not None:  # weights go in before sharding: every rank reads the full file
        load_model_weights(model, ckpt)
        if tc.ema_decay > 0 and (ckpt / "ema.safetensors").is_file():
            ema_start = Transformer(cfg.model).to(device)
            load_model_weights(ema_start, ckpt, "ema.safetensors")
    wrapped = wrap_model(model, dist_info, fsdp)
    if fsdp and ema_start is not None:
        shard_model(ema_start)  # same layout as the model, so shards line up
    ema = EMA(model, tc.ema_decay) if tc.ema_decay > 0 else None
    optimizer = make_optimizer(model, tc.lr, tc.weight_decay, (tc.beta1, tc.beta2), fused=not fsdp)
    dc = cfg.diffusion
    objective = make_objective(tc.objective, dc.schedule, tokenizer, edit_prob=dc.edit_prob, antithetic=dc.antithetic,
                               edit_weight=dc.edit_weight, prompt_prob=dc.prompt_prob)
    train_tokens, val_tokens = corpus.split("train"), corpus.split("val")
    loader = RandomWindows(train_tokens, cfg.model.block_size, seed=tc.seed, device=device)
    noise = torch.Generator()

    step, tokens_seen, elapsed_before = 0, 0, 0.0
    if ckpt is not None:
        state = load_trainer_state(ckpt)
        # Either format loads either way: a run can move between DDP, FSDP and one process.
        optim_state, by_name = state["optimizer"], state.get("optimizer_format") == "fsdp-full"
        if fsdp:
            load_full_optimizer_state(model, optimizer, optim_state if by_name else
                                      optimizer_state_by_name(optimizer, model, optim_state))
        else:
            optimizer.load_state_dict(optimizer_state_by_index(optim_state) if by_name else optim_state)
        loader.load_state_dict(state["loader"])
        set_rng_state(state["rng"])
        step, tokens_seen, elapsed_before = state["step"], state["tokens_seen"], state["elapsed"]
        if ema is not None:
            if ema_start is not None:
                ema.load_state_dict({n: p.detach().float() for n, p in ema_start.named_parameters()},
                                    state.get("ema_updates", step))
                del ema_start
            elif not quiet:
                print("dlm: the checkpoint has no EMA weights; the average restarts from the current weights")

    if dist_info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "config.json", cfg.to_dict())
        tokenizer.save(run_dir / "tokenizer.json")

    compiled = torch.compile(wrapped) if should_compile(tc.compile, device) else wrapped
    global_micro = tc.batch_size // tc.grad_accum
    tokens_per_step = tc.batch_size * cfg.model.block_size  # over all ranks
    local_tokens_per_step = tokens_per_step // dist_info.world_size
    if not quiet:
        ranks = f", {dist_info.world_size} ranks ({'FSDP2' if fsdp else 'DDP'})" if dist_info.enabled else ""
        print(f"dlm: {tc.objective} model, {model.num_params() / 1e6:.2f}M parameters, "
              f"{cfg.model.n_layer}×{cfg.model.d_model}, vocab {tokenizer.vocab_size} ({tokenizer.kind}); "
              f"device {device}, {str(dtype).removeprefix('torch.')}, "
              f"compile {'on' if compiled is not wrapped else 'off'}{ranks}; "
              f"train {len(train_tokens):,} / val {len(val_tokens):,} tokens")

    def save(current_step: int) -> None:
        if fsdp:  # gathering the full state is a collective: every rank takes part
            raw, optim_state = full_state_dicts(model, optimizer)
            if ema is not None:
                with ema.swapped_in(model):
                    averaged, _ = full_state_dicts(model, None)
        if not dist_info.is_main:
            return
        if fsdp:
            weights = {"model.safetensors": clone_state(raw)}
            if ema is not None:
                weights["ema.safetensors"] = clone_state(averaged)
        else:
            optim_state = optimizer.state_dict()
            weights = {"model.safetensors": model_state(model)}
            if ema is not None:
                with ema.swapped_in(model):
                    weights["ema.safetensors"] = model_state(model)
        state = {"optimizer": optim_state, "optimizer_format": "fsdp-full" if fsdp else "torch",
                 "loader": loader.state_dict(), "rng": rng_state(),
                 "step": current_step, "tokens_seen": tokens_seen,
                 "elapsed": elapsed_before + time.time() - start, "ema_updates": ema.updates if ema else 0}
        save_checkpoint(run_dir, current_step, weights, state, tc.keep_last)

    def validate() -> float:
        context = ema.swapped_in(model) if ema is not None else contextlib.nullcontext()
        with context:
            return quick_val_loss(model, objective, val_tokens, cfg.model.block_size, global_micro,
                                  tc.eval_batches, device, dtype)

    logger = RunLogger(run_dir, dist_info.is_main, tensorboard=tc.tensorboard, wandb=tc.wandb,
                       config=cfg.to_dict())
    log = logger.log

    start = time.time()
    window_loss, window_tokens, window_start = torch.zeros((), device=device), 0, time.time()
    last_loss, val_loss, stopped_by, bad_steps = float("nan"), None, "max_steps", []
    # With a time budget the step count is not the limit: show steps and the time left instead.
    bar = tqdm(total=None if tc.max_time > 0 else tc.max_steps, initial=step, disable=quiet,
               dynamic_ncols=True, unit="step")
    model.train()
    with StopFlag() as stop:
        while step < tc.max_steps:
            elapsed = elapsed_before + time.time() - start
            progress = step / tc.max_steps
            if tc.max_time > 0 and tc.lr_decay_time:
                progress = max(progress, elapsed / tc.max_time)
            lr = lr_at(progress, step, tc.lr, tc.warmup_steps, tc.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr

            step_loss = torch.zeros((), device=device)
            for micro in range(tc.grad_accum):
                x = loader.next_batch(global_micro, dist_info.rank, dist_info.world_size)
                noise.manual_seed(noise_seed(tc.seed, step, micro, dist_info.rank))
                # Gradients are all-reduced only on the last micro-batch.
                sync = micro == tc.grad_accum - 1 or not dist_info.enabled
                with gradient_sync(wrapped, sync):
                    with autocast(device, dtype):
                        out = objective(compiled, x, noise)
                    # Divide by this rank's tokens of the whole step: DDP averages over ranks, so
                    # the update equals the one big batch would give.
                    (out.nll_sum / local_tokens_per_step).backward()
                step_loss += out.nll_sum.detach()
            # The norm is of the all-reduced gradients, so every rank sees the same verdict.
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            if hasattr(grad_norm, "full_tensor"):  # FSDP2: a replicated DTensor
                grad_norm = grad_norm.full_tensor()
            if not torch.isfinite(grad_norm):
                optimizer.zero_grad(set_to_none=True)  # skip this update
                bad_steps.append(step)
                log({"step": step, "skipped": "non-finite loss or gradient"})
                if len(bad_steps) >= tc.max_bad_steps:
                    raise DlmError(f"{len(bad_steps)} steps in a row had non-finite loss or gradients (steps "
                                   f"{bad_steps[0]}–{bad_steps[-1]}); lower train.lr or use train.dtype=fp32")
                step += 1
                continue
            bad_steps = []
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(model)
            step += 1
            tokens_seen += tokens_per_step
            window_loss += step_loss  # stays on the device: no sync per step
            window_tokens += tokens_per_step
            bar.update(1)

            if step % tc.log_interval == 0 or step == tc.max_steps:
                now = time.time()
                last_loss = all_reduce_sum(window_loss, dist_info).item() / window_tokens
                record = {"step": step, "loss": last_loss, "lr": lr, "grad_norm": float(grad_norm),
                          "tokens_per_s": window_tokens / (now - window_start),
                          "tokens_seen": tokens_seen, "elapsed_s": elapsed_before + now - start}
                if device.type == "cuda":
                    record["max_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
                else:  # peak resident memory of the process (KiB on Linux)
                    record["max_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                log(record)
                postfix = {"loss": f"{last_loss:.3f}", "tok_s": f"{record['tokens_per_s']:,.0f}", "lr": f"{lr:.1e}"}
                if tc.max_time > 0:
                    postfix["left"] = f"{max(tc.max_time - record['elapsed_s'], 0):.0f}s"
                bar.set_postfix(postfix)
                window_loss, window_tokens, window_start = torch.zeros((), device=device), 0, time.time()

            # Every rank takes the same branch: the decision to stop is shared.
            out_of_time = tc.max_time > 0 and elapsed_before + time.time() - start >= tc.max_time
            signalled = stop.reason is not None
            if dist_info.enabled:
                flags = torch.tensor([float(out_of_time), float(signalled)], device=device)
                out_of_time, signalled = (all_reduce_sum(flags, dist_info) > 0).tolist()
            finishing = step == tc.max_steps or out_of_time or signalled
            if step % tc.eval_interval == 0 or finishing:
                val_loss = validate()
                log({"step": step, "val_loss": val_loss, "elapsed_s": elapsed_before + time.time() - start})
                if not quiet:
                    bar.write(f"step {step}: train {last_loss:.4f}  val {val_loss:.4f} nats/token"
                              f"{' (EMA weights)' if ema is not None else ''}")
            if step % tc.ckpt_interval == 0 or finishing:
                save(step)
                barrier(dist_info)
            if out_of_time:
                stopped_by = "max_time"
                break
            if signalled:
                stopped_by = stop.reason or "signal on another rank"
                if not quiet:
                    bar.write(f"dlm: {stopped_by} received; saved step {step}, exiting")
                break
    bar.close()
    logger.close()
    cleanup(dist_info)
    return TrainResult(run_dir, step, last_loss, val_loss, stopped_by)
