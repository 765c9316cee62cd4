"""`dlm train` and `dlm finetune`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from dlm.errors import DlmError

BD3_DEFAULT_BLOCK = 4

EPILOG_TRAIN = """examples:
  dlm train                                        # default preset on Tiny Shakespeare (block diffusion on a CPU)
  dlm train --preset shakespeare-char-cpu --objective mdlm --max-time 600 --out runs/mdlm   # no probe: as it is
  dlm train --objective ar --out runs/ar           # the autoregressive twin
  dlm train --objective bd3 --block-size 4 --out runs/bd3   # block diffusion (BD3-LM)
  dlm train --out runs/mdlm --resume max_steps=20000
  dlm train --data my_corpus/ tokenizer=bpe vocab_size=4096 n_layer=8 lr=6e-4

With no --preset on a CPU, a few seconds' budget probe picks the model size, the precision and, for a
block run, the batch that learnt most in such a budget; the run's first line says what it chose and why
(docs/training.md). key=value overrides any config field (and the probe's choice), dotted (train.lr=3e-4)
or bare when unique (lr=3e-4); `dlm presets --show NAME` lists every field with its default."""


EPILOG_FINETUNE = """examples:
  dlm finetune --base runs/shakespeare-char-cpu-bd3 --chat --data tinyshakespeare   # a Shakespeare chat model
  dlm finetune --base runs/mdlm --chat --data conversations.jsonl --lora 8 --max-steps 1000
  dlm finetune --base runs/mdlm --data my_notes/ --out runs/mdlm-notes               # continued pre-training
  dlm chat --ckpt runs/shakespeare-char-cpu-bd3-chat"""


def _default_preset() -> str:
    import torch

    return "shakespeare-char" if torch.cuda.is_available() else "shakespeare-char-cpu"


def cmd_train(args: argparse.Namespace) -> int:
    from dlm.config import apply_overrides
    from dlm.presets import get_preset
    from dlm.run_folder import RunFolder
    from dlm.train.trainer import train

    overrides = list(args.overrides)
    for flag, key in (("data", "data.source"), ("max_steps", "train.max_steps"), ("max_time", "train.max_time"),
                      ("objective", "train.objective"), ("compile", "train.compile"),
                      ("block_size", "diffusion.block_size")):
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    if args.wandb:
        overrides.append("train.wandb=true")
    if args.fsdp:
        overrides.append("train.fsdp=true")
    run_dir = Path(args.out) if args.out else None
    resume = args.resume or args.fresh_optimizer
    if resume and run_dir is None:
        raise DlmError("--resume needs --out RUN_DIR (the run to continue)")
    run = RunFolder(run_dir) if run_dir is not None else None
    if resume and run.has_config():  # continue the run with its own config (key=value may still change it)
        cfg = run.read_config()
    elif resume and run.checkpoints():
        raise DlmError(f"cannot resume: {run.config_path} is missing but {run.checkpoints_dir} is not; restore "
                       "config.json from a backup, or move the folder aside")
    else:  # nothing to resume yet: a new run, so one script serves the first submission and every requeue
        cfg = get_preset(args.preset or _default_preset())
    if args.block_size is not None and cfg.train.objective != "bd3" and "train.objective=" not in " ".join(overrides):
        cfg.train.objective = "bd3"  # --block-size alone asks for block diffusion
    cfg = apply_overrides(cfg, overrides)
    if cfg.train.objective == "bd3" and not cfg.diffusion.block_size and not any(
            o.startswith(("diffusion.block_size=", "block_size=")) for o in overrides):
        cfg.diffusion.block_size = BD3_DEFAULT_BLOCK  # the measured default (docs/block-diffusion.md)
    user_block = args.block_size is not None or any(o.startswith(("diffusion.block_size=", "block_size="))
                                                    for o in overrides)
    asked_bd3 = user_block or "train.objective=bd3" in overrides or "objective=bd3" in overrides
    d = cfg.diffusion
    mdlm_only = cfg.model.backbone or cfg.model.time_conditioning or d.edit_prob or d.prompt_prob \
        or d.masking != "uniform"
    if cfg.train.objective == "bd3" and not asked_bd3 and mdlm_only:
        # The preset's block diffusion does not take these; what they were built for is MDLM.
        cfg.train.objective, d.block_size = "mdlm", 0
    if cfg.train.objective != "bd3" and user_block and cfg.diffusion.block_size:
        raise DlmError(f"a block size is for block diffusion, not train.objective={cfg.train.objective}: "
                       "use --objective bd3, or leave the block size out")
    fresh_default = not (resume and run.has_config()) and not args.preset and cfg.preset == "shakespeare-char-cpu"
    if fresh_default and cfg.train.max_time > 0 and "RANK" not in os.environ:
        from dlm.sizing import auto_size, probe_skip_reason

        cfg.validate()  # a bad key=value fails now, not after the probe's seconds
        skipped = probe_skip_reason(cfg, overrides)
        if skipped is None:
            cfg, _, reason = auto_size(cfg, overrides)  # a size for this machine's speed; key=value still wins
        print(f"dlm: {skipped or reason}", flush=True)
    if run_dir is None:
        run_dir = Path("runs") / f"{cfg.preset or 'run'}-{cfg.train.objective}"
    result = train(cfg, run_dir, resume=resume, quiet=args.quiet, fresh_optimizer=args.fresh_optimizer)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for all
        print(stopped_message(result))
    return 0


def stopped_message(result) -> str:
    """Where the run stopped and where it is; and its best checkpoint, when that is an earlier one."""
    from dlm.run_folder import RunFolder

    text = f"dlm: stopped at step {result.step} ({result.stopped_by}); run saved in {result.run_dir}"
    best = RunFolder(result.run_dir).best_record()
    if best is not None and best["step"] < result.step:
        text += (f"; its lowest validation loss, {best['val_loss']:.4f} nats/token, was at step {best['step']} "
                 f"(--ckpt {result.run_dir}/best)")
    return text


def train_in(out: Path, args: argparse.Namespace, fresh, flags: dict[str, str], extra: list[str] = ()) -> int:
    """`dlm finetune` and `dlm adapt`: continue the run in `out` with its own config, or start one from
    `fresh()`; then the flags (attribute → config key), key=value and `extra` overrides, and train."""
    from dlm.config import apply_overrides
    from dlm.run_folder import RunFolder
    from dlm.train.trainer import train

    run = RunFolder(out)
    resume = args.resume or run.has_config()
    cfg = run.read_config() if resume and run.has_config() else fresh()
    overrides = list(args.overrides)
    overrides += [f"{key}={getattr(args, flag)}" for flag, key in flags.items() if getattr(args, flag) is not None]
    cfg = apply_overrides(cfg, [*overrides, *extra])
    result = train(cfg, out, resume=resume, quiet=args.quiet)
    print(stopped_message(result))
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from dlm.train.finetune import finetune_config

    def fresh():
        if not args.data:
            raise DlmError("--data is needed: the conversations (JSONL, a play script, hf:NAME) or the text "
                           "to fine-tune on")
        return finetune_config(args.base, args.data, args.chat)

    out = Path(args.out) if args.out else Path("runs") / f"{Path(args.base).name}-{'chat' if args.chat else 'ft'}"
    return train_in(out, args, fresh, {"max_steps": "train.max_steps", "max_time": "train.max_time",
                                       "lora": "model.lora_rank", "fill": "finetune.fill"})


def register(sub) -> None:
    p = sub.add_parser("train", help="train a diffusion model (or its AR twin)", epilog=EPILOG_TRAIN,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", help="named config (see `dlm presets`); default shakespeare-char-cpu, "
                   "or shakespeare-char when a GPU is present")
    p.add_argument("--data", help="corpus: file, folder, glob, or 'tinyshakespeare' (default)")
    p.add_argument("--out", help="run folder for config, checkpoints and logs (default runs/PRESET-OBJECTIVE)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    p.add_argument("--max-time", type=float, help="stop (after saving) after this many seconds")
    p.add_argument("--objective", choices=("mdlm", "bd3", "ar"),
                   help="mdlm (diffusion, the whole text at once), bd3 (block diffusion, blocks of --block-size) or "
                   "ar (the causal twin). Default: the preset's (bd3 for the CPU preset, mdlm for the others)")
    p.add_argument("--block-size", type=int, metavar="B",
                   help=f"block diffusion: tokens per block, a divisor of the context (implies --objective bd3; "
                   f"default {BD3_DEFAULT_BLOCK})")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest intact "
                   "checkpoint (a folder with none yet starts a new run)")
    p.add_argument("--fresh-optimizer", action="store_true", help="with --resume, when no checkpoint is wholly "
                   "intact: continue from the newest intact weights with a fresh optimizer and data order")
    p.add_argument("--compile", choices=("auto", "yes", "no"),
                   help="torch.compile the model (auto: when a C++ compiler or CUDA is present)")
    p.add_argument("--fsdp", action="store_true",
                   help="under torchrun, shard the model with FSDP2 instead of DDP")
    p.add_argument("--wandb", action="store_true", help="also log to Weights & Biases (if installed)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("finetune", help="fine-tune a trained run, e.g. into a chat model (--chat)",
                       description="Start from a trained run's weights and config and train on new data. With --chat "
                       "the data are conversations — a JSONL file of {\"messages\": [{\"role\", \"content\"}]}, "
                       "hf:NAME, or a play script such as Tiny Shakespeare, which is turned into cue → reply "
                       "conversations — and only the assistant replies are noised and scored. Resumable like "
                       "dlm train (--resume, or simply run it again).", epilog=EPILOG_FINETUNE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the trained run to start from (diffusion or AR twin; its newest "
                   "checkpoint, or RUN/best for its lowest validation loss)")
    p.add_argument("--data", help="conversations or text: a JSONL file, a play script, a folder, hf:NAME")
    p.add_argument("--chat", action="store_true", help="chat fine-tuning: chat tokens, response-only loss")
    p.add_argument("--out", help="the new run folder (default runs/BASE-chat or runs/BASE-ft)")
    p.add_argument("--max-steps", type=int, help="optimizer steps (default 2000)")
    p.add_argument("--max-time", type=float, help="stop (after saving) after this many seconds")
    p.add_argument("--lora", type=int, metavar="RANK", help="LoRA adapters of this rank on frozen weights "
                   "(default: full fine-tuning)")
    p.add_argument("--fill", choices=("pad", "eos", "block-eos"), help="what follows a reply's end-of-turn token "
                   "in training (default eos, measured in docs/chat.md)")
    p.add_argument("--resume", action="store_true", help="continue the fine-tune in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(func=cmd_finetune)
