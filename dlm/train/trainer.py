"""Training, in parts: `prepare` (what the run is), `build_state` (the model, optimizer and loader,
restored from a checkpoint when resuming), `optimizer_step` (one step: gradient accumulation, bf16
autocast, clipping, a NaN guard, EMA), `stop_decision`, `validate`, `save`, and `train`, the loop
that composes them with JSONL logs, a progress bar, DDP/FSDP under torchrun, and a graceful stop on
a time budget or a signal. Chat fine-tuning and sweeps reuse the parts rather than the loop.
"""

from __future__ import annotations

import contextlib
import copy
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from dlm.config import RunConfig, parse_t_range
from dlm.diffusion.process import entropy_mask_scale
from dlm.errors import DlmError
from dlm.model.hf_backbone import build_model
from dlm.objectives import Objective, make_objective
from dlm.progress import Progress
from dlm.run_folder import RunFolder, RunLock, load_weights, weights_intact
from dlm.runtime import autocast, compile_model, pick_device, pick_dtype
from dlm.tokenizers import Tokenizer
from dlm.train.data_source import TrainingData, prepare_training_data
from dlm.train.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    cleanup,
    gradient_sync,
    init_distributed,
    shard_model,
    wrap_model,
)
from dlm.train.ema import EMA
from dlm.train.finetune import load_base_weights
from dlm.train.logging import RunLogger
from dlm.train.optim import build_optimizer, lr_at
from dlm.train.resume import ResumePoint, find_resume_point, keep_old_log, resume_message, take_lock
from dlm.train.signals import StopFlag
from dlm.train.state import TrainState, noise_seed, seed_everything
from dlm.train.validation import quick_val_loss


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    last_loss: float
    val_loss: float | None
    stopped_by: str
    config: RunConfig
    """The resolved config the run trained with (vocabulary size and causality filled in)."""


@dataclass
class TrainSetup:
    """What the run is, fixed for its life: rebuilt from the config and the corpus, never saved."""
    cfg: RunConfig
    run: RunFolder
    dist: DistInfo
    device: torch.device
    dtype: torch.dtype
    tokenizer: Tokenizer
    objective: Objective
    data: TrainingData
    quiet: bool
    lock: RunLock | None = None
    """The run's writer lock (main rank only); `train` releases it when it returns or fails."""

    @property
    def micro_batch(self) -> int:
        """Sequences per forward pass, over all ranks (each rank reads its share)."""
        return self.cfg.train.batch_size // self.cfg.train.grad_accum

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.train.batch_size * self.cfg.model.block_size


@dataclass
class StepOutcome:
    loss_sum: torch.Tensor
    """Summed loss of the step's tokens on this rank (on the device: no sync per step)."""
    grad_norm: torch.Tensor
    skipped: bool
    """Non-finite gradients: no update was made."""


def prepare(cfg: RunConfig, run_dir: Path, resume: bool = False, quiet: bool = False,
            fresh_optimizer: bool = False) -> tuple[TrainSetup, ResumePoint]:
    """Validate, join the process group, take the run's writer lock, find where to resume, pick
    device and dtype, seed, tokenize the corpus.

    `cfg` is not changed: the setup holds a resolved copy. The caller releases `setup.lock`."""
    cfg = copy.deepcopy(cfg)
    if cfg.train.objective != "bd3" or cfg.model.backbone:
        # block diffusion's token-causal clean copy and its masking (the CPU preset sets them): dlm's own bd3
        # networks only
        cfg.model.clean_causal, cfg.diffusion.clean_ar_weight, cfg.diffusion.block_noise = False, 0.0, "t"
    cfg.validate()
    run, tc = RunFolder(run_dir), cfg.train
    dist, device_name = init_distributed(tc.device)
    lock = take_lock(run, dist)
    try:
        return _prepare_locked(cfg, run, dist, device_name, lock, resume, quiet or not dist.is_main, fresh_optimizer)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _prepare_locked(cfg: RunConfig, run: RunFolder, dist: DistInfo, device_name: str, lock: RunLock | None,
                    resume: bool, quiet: bool, fresh_optimizer: bool) -> tuple[TrainSetup, ResumePoint]:
    tc = cfg.train
    if tc.batch_size % (tc.grad_accum * dist.world_size):
        raise DlmError(f"train.batch_size={tc.batch_size} must be a multiple of grad_accum × ranks "
                       f"= {tc.grad_accum * dist.world_size}")
    if not resume and run.checkpoints():
        raise DlmError(f"{run.path} already holds a training run; pass --resume to continue it "
                       "or choose a new --out folder")
    point = find_resume_point(run, fresh_optimizer, quiet=not dist.is_main) if resume else ResumePoint()
    if dist.is_main:
        if resume:  # said even with --quiet: where a run continues from is never noise
            print(resume_message(run, point, tc.max_steps, tc.max_time), flush=True)
        if point.checkpoint is None:
            keep_old_log(run)

    device = pick_device(device_name)
    dtype = pick_dtype(tc.dtype, device)
    seed_everything(tc.seed)
    # A resumed run keeps its own tokenizer, whatever the corpus cache holds now.
    saved_tokenizer = run.read_tokenizer() if point.checkpoint is not None else None
    if dist.is_main:  # tokenize once, then the other ranks read the cache
        data = prepare_training_data(cfg, saved_tokenizer, progress=not quiet, echo=print if not quiet else _silent)
    barrier(dist)
    if not dist.is_main:
        data = prepare_training_data(cfg, saved_tokenizer, echo=_silent)
    tokenizer = data.tokenizer
    if cfg.model.backbone and not cfg.model.backbone_config:  # the run carries the backbone's config
        from dlm.model.hf_backbone import read_backbone_config

        cfg.model.backbone_config = read_backbone_config(cfg.model)
    if cfg.model.backbone and tc.objective == "bd3":
        from dlm.model.hf_backbone import is_causal_lm

        if not is_causal_lm(cfg.model.backbone_config):
            raise DlmError("train.objective=bd3 takes dlm's own Transformer or a causal-LM backbone, not a masked "
                           "LM; use --objective mdlm with it")
    cfg.model.vocab_size = tokenizer.vocab_size
    cfg.model.causal = tc.objective == "ar"
    if tc.objective != "bd3":  # a preset's block size belongs to its block-diffusion objective
        cfg.diffusion.block_size = 0
    dc = cfg.diffusion
    objective = make_objective(tc.objective, dc.schedule, tokenizer, edit_prob=dc.edit_prob, antithetic=dc.antithetic,
                               edit_weight=dc.edit_weight, prompt_prob=dc.prompt_prob, weighting=dc.weighting,
                               weight_cap=dc.weight_cap, ar_input_mask=tc.ar_input_mask,
                               block_size=dc.block_size, t_range=parse_t_range(dc.t_range),
                               noisy_copies=dc.noisy_copies, clean_ar_weight=dc.clean_ar_weight,
                               block_noise=dc.block_noise)
    if dc.masking == "entropy" and tc.objective != "ar":
        from dlm.train.entropy_masking import cached_entropies

        if dist.is_main:  # computed once, then the other ranks read the cache
            data.token_entropy, data.mean_entropy = cached_entropies(dc.entropy_run, data.corpus, device, dtype,
                                                                     progress=not quiet)
        barrier(dist)
        if not dist.is_main:
            data.token_entropy, data.mean_entropy = cached_entropies(dc.entropy_run, data.corpus, device, dtype)
    return TrainSetup(cfg, run, dist, device, dtype, tokenizer, objective, data, quiet, lock), point


def _silent(*args, **kwargs) -> None:
    pass


def build_state(setup: TrainSetup, point: ResumePoint | None = None) -> TrainState:
    """Model, EMA, optimizer and loader; from a resume point, everything as it was saved (or, for a
    weights-only resume, the weights with a fresh optimizer and a data order of its own)."""
    cfg, tc, device = setup.cfg, setup.cfg.train, setup.device
    point = point or ResumePoint()
    ckpt = point.checkpoint
    fsdp = tc.fsdp and setup.dist.enabled
    model = build_model(cfg.model, pretrained=ckpt is None and not cfg.finetune.base).to(device)
    if ckpt is None and not cfg.finetune.base and hasattr(model, "init_token_rows"):
        tok = setup.tokenizer  # a pretrained LM's rows for the tokens dlm added start neutral
        model.init_token_rows([tok.token_to_id(t) for t in tok.added_tokens])
    if tc.gradient_checkpointing:
        if not hasattr(model, "gradient_checkpointing"):
            raise DlmError("train.gradient_checkpointing is for `transformers` backbones (dlm adapt); dlm's own "
                           "Transformer is small enough without it: drop it")
        model.gradient_checkpointing()
    ema_start = None
    if ckpt is None and cfg.finetune.base:  # a fine-tune starts from its base's weights
        used = load_base_weights(model, cfg.finetune.base)
        if not setup.quiet:
            print(f"dlm: fine-tuning from {used}" + (f" with LoRA rank {cfg.model.lora_rank}"
                                                    if cfg.model.lora_rank else ""))
    if ckpt is not None:  # weights go in before sharding: every rank reads the full file
        load_weights(model, ckpt)
        has_ema = (ckpt / "ema.safetensors").is_file() and (not point.weights_only
                                                             or weights_intact(ckpt, "ema.safetensors"))
        if tc.ema_decay > 0 and has_ema:
            ema_start = build_model(cfg.model).to(device)
            load_weights(ema_start, ckpt, "ema.safetensors")
    wrapped = wrap_model(model, setup.dist, fsdp)
    if fsdp and ema_start is not None:
        shard_model(ema_start)  # same layout as the model, so shards line up
    ema = EMA(model, tc.ema_decay) if tc.ema_decay > 0 else None
    optimizer = build_optimizer(tc.optimizer, model, tc.lr, tc.weight_decay, (tc.beta1, tc.beta2),
                                fused=not fsdp, ns_dtype=setup.dtype)
    data_seed = tc.seed + point.step if point.weights_only else tc.seed  # not a replay of the first batches
    loader = setup.data.loader(cfg, "train", data_seed, device)
    compiled = compile_model(wrapped, tc.compile, device)
    state = TrainState(model, wrapped, compiled, optimizer, ema, loader, fsdp)
    if point.saved is not None:
        state.restore(point.saved, ema_start)
    elif point.weights_only:
        state.step, state.tokens_seen = point.step, point.step * setup.tokens_per_step
        if ema is not None and ema_start is not None:
            ema.load_state_dict({n: p.detach().float() for n, p in ema_start.named_parameters()}, point.step)
    if ckpt is not None and ema is not None and ema_start is None and not setup.quiet:
        print("dlm: the checkpoint has no EMA weights; the average restarts from the current weights")
    return state


def learning_rate(state: TrainState, setup: TrainSetup) -> float:
    """Warmup then cosine decay, over max_steps or (with lr_decay_time) over the time budget."""
    tc = setup.cfg.train
    progress = state.step / tc.max_steps
    if tc.max_time > 0 and tc.lr_decay_time:
        progress = max(progress, state.elapsed() / tc.max_time)
    return lr_at(progress, state.step, tc.lr, tc.warmup_steps, tc.min_lr_ratio)


def optimizer_step(state: TrainState, setup: TrainSetup, lr: float, noise: torch.Generator) -> StepOutcome:
    """One optimizer step over grad_accum micro-batches; skipped (no update) when the gradients
    are not finite. Advances the step counter either way."""
    tc, dist = setup.cfg.train, setup.dist
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    if tc.attention_anneal_steps and hasattr(state.model, "future_visible"):  # causal → bidirectional
        state.model.future_visible = min(1.0, state.step / tc.attention_anneal_steps)
    local_tokens = setup.tokens_per_step // dist.world_size
    loss_sum = torch.zeros((), device=setup.device)
    for micro in range(tc.grad_accum):
        x = state.loader.next_batch(setup.micro_batch, dist.rank, dist.world_size)
        noise.manual_seed(noise_seed(tc.seed, state.step, micro, dist.rank))
        # Gradients are all-reduced only on the last micro-batch.
        sync = micro == tc.grad_accum - 1 or not dist.enabled
        extras = dict(getattr(state.loader, "last_extras", {}))  # chat: prompt mask and token weights
        if setup.data.token_entropy is not None:
            extras["mask_scale"] = entropy_mask_scale(state.loader.last_aux, setup.data.mean_entropy)
        with gradient_sync(state.wrapped, sync):
            with autocast(setup.device, setup.dtype):
                out = setup.objective(state.compiled, x, noise, **extras)
            # Divide by this rank's tokens of the whole step: DDP averages over ranks, so the update
            # equals the one big batch would give.
            (out.nll_sum / local_tokens).backward()
        loss_sum += out.nll_sum.detach()
    # The norm is of the all-reduced gradients, so every rank sees the same verdict.
    grad_norm = torch.nn.utils.clip_grad_norm_(state.model.parameters(), tc.grad_clip)
    if hasattr(grad_norm, "full_tensor"):  # FSDP2: a replicated DTensor
        grad_norm = grad_norm.full_tensor()
    skipped = not bool(torch.isfinite(grad_norm))
    if not skipped:
        state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    if not skipped:
        if state.ema is not None:
            state.ema.update(state.model)
        state.tokens_seen += setup.tokens_per_step
    state.step += 1
    return StepOutcome(loss_sum, grad_norm, skipped)


def stop_decision(state: TrainState, setup: TrainSetup, stop: StopFlag) -> tuple[bool, bool]:
    """(out of time, signalled), agreed by every rank so all take the same branch."""
    tc = setup.cfg.train
    out_of_time = tc.max_time > 0 and state.elapsed() >= tc.max_time
    signalled = stop.reason is not None
    if setup.dist.enabled:
        flags = torch.tensor([float(out_of_time), float(signalled)], device=setup.device)
        out_of_time, signalled = (all_reduce_sum(flags, setup.dist) > 0).tolist()
    return out_of_time, signalled


def validate(state: TrainState, setup: TrainSetup) -> float:
    """A quick fixed-seed validation loss, on the EMA weights when there are any."""
    tc = setup.cfg.train
    context = state.ema.swapped_in(state.model) if state.ema is not None else contextlib.nullcontext()
    with context:
        return quick_val_loss(state.model, setup.objective, setup.data.loader(setup.cfg, "val", 0, setup.device),
                              setup.micro_batch, tc.eval_batches, setup.device, setup.dtype)


def improves(val_loss: float, best_val: float, setup: TrainSetup) -> bool:
    """Whether this validation beats the best so far, agreed by every rank (each saves, under FSDP)."""
    better = val_loss < best_val
    if setup.dist.enabled:
        flag = torch.tensor([float(better)], device=setup.device)
        better = bool(all_reduce_sum(flag, setup.dist).item() > 0)
    return better


def save(state: TrainState, setup: TrainSetup) -> None:
    """A checkpoint of the current step (a collective under FSDP; only the main rank writes)."""
    payload = state.checkpoint_payload(setup.dist.is_main)
    if payload is not None:
        weights, trainer_state = payload
        setup.run.save_checkpoint(state.step, weights, trainer_state, setup.cfg.train.keep_last)
    barrier(setup.dist)


def describe(state: TrainState, setup: TrainSetup) -> str:
    cfg, dist, tok = setup.cfg, setup.dist, setup.tokenizer
    ranks = f", {dist.world_size} ranks ({'FSDP2' if state.fsdp else 'DDP'})" if dist.enabled else ""
    shape = cfg.model.backbone or f"{cfg.model.n_layer}×{cfg.model.d_model}"
    return (f"dlm: {cfg.train.objective} model, {state.model.num_params() / 1e6:.2f}M parameters, "
            f"{shape}, vocab {tok.vocab_size} ({tok.kind}); "
            f"device {setup.device}, {str(setup.dtype).removeprefix('torch.')}, "
            f"compile {'on' if state.compiled is not state.wrapped else 'off'}{ranks}; {setup.data.describe()}")


def peak_memory_mb(device: torch.device) -> float:
    """GPU allocator peak on CUDA; peak resident memory of the process on CPU (KiB on Linux)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train(cfg: RunConfig, run_dir: Path, resume: bool = False, quiet: bool = False,
          fresh_optimizer: bool = False, on_validate: Callable[[int, float], bool] | None = None) -> TrainResult:
    """Train `cfg` into `run_dir` (continuing its newest intact checkpoint with `resume`; with
    `fresh_optimizer`, from the newest intact weights when no checkpoint is wholly intact).

    `on_validate(step, val_loss)` is called after each validation; returning True stops the run
    there (after saving), as a sweep's pruner does."""
    setup, point = prepare(cfg, Path(run_dir), resume, quiet, fresh_optimizer)
    try:
        return _train(setup, point, on_validate)
    finally:
        if setup.lock is not None:
            setup.lock.release()


def _train(setup: TrainSetup, point: ResumePoint, on_validate: Callable[[int, float], bool] | None) -> TrainResult:
    state = build_state(setup, point)
    cfg, tc, dist, quiet = setup.cfg, setup.cfg.train, setup.dist, setup.quiet
    if dist.is_main:
        setup.run.path.mkdir(parents=True, exist_ok=True)
        setup.run.write_config(cfg)
        setup.run.write_tokenizer(setup.tokenizer)
    if not quiet:
        print(describe(state, setup))
    logger = RunLogger(setup.run.path, dist.is_main, tensorboard=tc.tensorboard, wandb=tc.wandb, config=cfg.to_dict())
    # Each session starts with a marker, so a log read later shows where a run resumed or restarted.
    logger.log({"step": state.step, "event": "resume" if point.checkpoint is not None else "start",
                "checkpoint": point.checkpoint.name if point.checkpoint is not None else None,
                "weights_only": point.weights_only, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    noise = torch.Generator()
    state.started_at = time.time()
    window_loss, window_tokens, window_start = torch.zeros((), device=setup.device), 0, time.time()
    last_loss, val_loss, stopped_by, bad_steps = float("nan"), None, "max_steps", []
    best = setup.run.best_record() if point.checkpoint is not None else None  # a resumed run's best so far
    best_val = best["val_loss"] if best is not None else float("inf")
    # With a time budget the step count is not the limit: show steps and the time left instead.
    bar = Progress(total=None if tc.max_time > 0 else tc.max_steps, initial=state.step, enabled=not quiet,
                   desc="train", unit="step", file=sys.stderr)  # a bar on a terminal, lines in a log
    state.model.train()
    with StopFlag() as stop:
        while state.step < tc.max_steps:
            lr = learning_rate(state, setup)
            outcome = optimizer_step(state, setup, lr, noise)
            if outcome.skipped:
                bad_steps.append(state.step - 1)
                logger.log({"step": state.step - 1, "skipped": "non-finite loss or gradient"})
                if len(bad_steps) >= tc.max_bad_steps:
                    raise DlmError(f"{len(bad_steps)} steps in a row had non-finite loss or gradients (steps "
                                   f"{bad_steps[0]}–{bad_steps[-1]}); lower train.lr or use train.dtype=fp32")
                continue
            bad_steps = []
            window_loss += outcome.loss_sum
            window_tokens += setup.tokens_per_step
            if state.step % tc.log_interval == 0 or state.step == tc.max_steps:
                now = time.time()
                last_loss = all_reduce_sum(window_loss, dist).item() / window_tokens
                record = {"step": state.step, "loss": last_loss, "lr": lr, "grad_norm": float(outcome.grad_norm),
                          "tokens_per_s": window_tokens / (now - window_start), "tokens_seen": state.tokens_seen,
                          "elapsed_s": state.elapsed(), "max_memory_mb": peak_memory_mb(setup.device)}
                if tc.attention_anneal_steps and hasattr(state.model, "future_visible"):
                    record["attention_open"] = state.model.future_visible  # share of later keys seen
                logger.log(record)
                postfix = {"loss": f"{last_loss:.3f}", "tok_s": f"{record['tokens_per_s']:,.0f}", "lr": f"{lr:.1e}"}
                if tc.max_time > 0:
                    postfix["left"] = f"{max(tc.max_time - record['elapsed_s'], 0):.0f}s"
                bar.set_postfix(postfix)
                window_loss, window_tokens, window_start = torch.zeros((), device=setup.device), 0, time.time()
            bar.update(1)  # after the postfix, so a progress line carries this step's loss

            out_of_time, signalled = stop_decision(state, setup, stop)
            finishing = state.step == tc.max_steps or out_of_time or signalled
            pruned = improved = False
            if state.step % tc.eval_interval == 0 or finishing:
                val_loss = validate(state, setup)
                logger.log({"step": state.step, "val_loss": val_loss, "elapsed_s": state.elapsed()})
                if not quiet:
                    bar.write(f"step {state.step}: train {last_loss:.4f}  val {val_loss:.4f} nats/token"
                              f"{' (EMA weights)' if state.ema is not None else ''}")
                pruned = on_validate is not None and not finishing and bool(on_validate(state.step, val_loss))
                improved = tc.keep_best and improves(val_loss, best_val, setup)
            if state.step % tc.ckpt_interval == 0 or finishing or pruned or improved:
                save(state, setup)
            if improved:
                best_val = val_loss
                if dist.is_main:  # the best before it is now only as safe as any other old checkpoint
                    setup.run.mark_best(state.step, val_loss)
                    setup.run.prune(tc.keep_last, setup.run.best_checkpoint())
                barrier(dist)  # no rank runs ahead (and out, tearing down the group) while the main one writes
            if pruned:
                stopped_by = "pruned"
                break
            if out_of_time:
                stopped_by = "max_time"
                break
            if signalled:
                stopped_by = stop.reason or "signal on another rank"
                if not quiet:
                    bar.write(f"dlm: {stopped_by} received; saved step {state.step}, exiting")
                break
    bar.close()
    logger.close()
    cleanup(dist)
    return TrainResult(setup.run.path, state.step, last_loss, val_loss, stopped_by, cfg)
