"""`dlm sample` and `dlm chat`."""

from __future__ import annotations

import argparse
import sys

from dlm.sampling.flags import add_sampler_flags

EPILOG_SAMPLE = """examples:
  dlm sample --ckpt runs/mdlm --prompt "ROMEO:" --length 200
  dlm sample --ckpt runs/mdlm --steps 64 --sampler margin --repetition-penalty 1.2
  dlm sample --ckpt runs/mdlm --block-length 32 --block-context prefix --kv-cache --threshold 0.9
  dlm sample --ckpt runs/mdlm --template "To be, or not to be: [MASK*30] question."
  dlm sample --ckpt runs/mdlm --steps 512 --length 256 --remask 0.05      # ReMDM: more steps than tokens
  dlm sample --ckpt runs/mdlm --prompt "ROMEO:" --prompt "JULIET:" --num-samples 2"""


def cmd_sample(args: argparse.Namespace) -> int:
    from dlm.inference import load
    from dlm.sampling.flags import sampler_options

    pipe = load(args.ckpt, device=args.device, dtype=args.dtype, weights=args.weights)
    options = {**sampler_options(args), "seed": args.seed}
    if args.steps is not None:
        options["steps"] = args.steps
    if args.edit is not None:
        print(pipe.edit(args.edit, rounds=args.edit_rounds or 4, threshold=args.edit_threshold or 0.1,
                        **{k: options[k] for k in ("seed", "temperature", "top_k", "top_p") if k in options}))
        return 0
    prompts = args.prompt or [""]
    if args.animate:
        from dlm.viz.terminal import animate

        decoder = pipe.decoder(prompts[0], args.length, template=args.template, **options)
        animate(pipe, decoder, delay=args.animate_delay)
        result = decoder.result()
        if args.verbose:
            print(f"dlm: {result.steps} steps, {result.forward_passes} forward passes", file=sys.stderr)
        return 0
    kwargs = {"length": args.length, "num_samples": args.num_samples, "template": args.template, **options}
    result = pipe.sample(prompts, **kwargs, on_step=step_printer(pipe) if args.show_steps else None)
    texts = pipe.decode(result)
    for i, text in enumerate(texts):
        if len(texts) > 1:
            print(f"─── sample {i + 1}/{len(texts)} ───")
        print(text)
    if args.verbose:
        print(f"dlm: {result.steps} steps, {result.forward_passes} forward passes", file=sys.stderr)
    return 0


def step_printer(pipe):
    """A callback that prints the first sample's text after every step, masks shown as '_'."""
    tok = pipe.tokenizer

    def show(state) -> None:
        ids = [i for i in state.tokens[0].tolist() if i != tok.pad_id]
        text = "".join("_" if i == tok.mask_id else tok.decode([i]) for i in ids)
        print(f"[step {state.step:4d}] {text!r}")

    return show


def cmd_race(args: argparse.Namespace) -> int:
    from dlm.errors import DlmError
    from dlm.inference import load
    from dlm.sampling.flags import sampler_options
    from dlm.viz.terminal import race

    diffusion, ar = load(args.diffusion, device=args.device), load(args.ar, device=args.device)
    if diffusion.is_autoregressive or not ar.is_autoregressive:
        raise DlmError("dlm race needs a diffusion run for --diffusion and an AR run for --ar")
    options = sampler_options(args)
    options["steps"] = args.steps or args.length
    runners = race(diffusion, ar, args.prompt, args.length, options, seed=args.seed)
    for r in runners:
        print(f"{r.name}: {r.tokens} tokens in {r.step} steps, {r.passes} forward passes, {r.seconds:.2f} s "
              f"({r.tokens / max(r.seconds, 1e-9):,.0f} tokens/s)")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from dlm.chat.repl import ChatSession, run_repl
    from dlm.inference import load
    from dlm.sampling.flags import sampler_options

    pipe = load(args.ckpt, device=args.device, dtype=args.dtype, weights=args.weights)
    options = {**sampler_options(args), "seed": args.seed}
    if args.steps is not None:
        options["steps"] = args.steps
    session = ChatSession(pipe, options, args.system, args.max_new_tokens)
    if args.once is not None:
        print(session.reply(args.once))
        return 0
    return run_repl(session)


def register(sub) -> None:
    p = sub.add_parser("sample", help="generate text from a trained run", epilog=EPILOG_SAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="run folder (its newest checkpoint), RUN/best (its lowest "
                   "validation loss) or a checkpoint folder")
    p.add_argument("--prompt", action="append", default=None,
                   help="text the sample starts with (never changed); repeat for a batch of prompts")
    p.add_argument("--template", help="infilling: text with [MASK] or [MASK*N] gaps to fill, kept verbatim elsewhere")
    p.add_argument("--edit", metavar="TEXT", help="let an editing-trained model fix TEXT (--edit-rounds, "
                   "default 4; --edit-threshold, default 0.1)")
    p.add_argument("--length", type=int, default=256, help="tokens to generate after the prompt")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: one per generated token)")
    p.add_argument("--seed", type=int, default=0, help="sample i uses seed + i")
    p.add_argument("--num-samples", type=int, default=1, help="samples per prompt")
    p.add_argument("--show-steps", action="store_true", help="print the first sample after every step")
    p.add_argument("--animate", action="store_true", help="redraw the first sample in place after every step "
                   "(a terminal animation of the text developing)")
    p.add_argument("--animate-delay", type=float, default=0.0, help="with --animate: seconds to pause per frame")
    p.add_argument("--verbose", action="store_true", help="report steps and forward passes")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp32"),
                   help="network precision; auto: bf16 on CUDA (logits still in fp32), fp32 on a CPU (faster there "
                   "one sample at a time)")
    p.add_argument("--weights", default="auto", choices=("auto", "ema", "raw"),
                   help="EMA-averaged or raw weights (auto: EMA when the checkpoint has them)")
    add_sampler_flags(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("chat", help="talk to a chat fine-tuned run (REPL, or --once for scripts)",
                       description="An interactive chat with the denoising of each reply drawn in place. "
                       "Commands: /reset, /steps N, /sampler NAME, /system TEXT, /help, /quit; Ctrl-D leaves.")
    p.add_argument("--ckpt", required=True, help="a chat fine-tuned run (dlm finetune --chat)")
    p.add_argument("--once", metavar="MESSAGE", help="print the reply to MESSAGE and exit")
    p.add_argument("--system", help="a system line before the conversation")
    p.add_argument("--max-new-tokens", type=int, default=None, help="room for the reply (default: half the context)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: one per token of room)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp32"),
                   help="network precision; auto: bf16 on CUDA, fp32 on a CPU")
    p.add_argument("--weights", default="auto", choices=("auto", "ema", "raw"))
    add_sampler_flags(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("race", help="a diffusion run and its AR twin writing side by side in the terminal",
                       description="Both models write the same length after the same prompt, one step each in "
                       "turn, drawn live side by side with step counts, forward passes and wall time.")
    p.add_argument("--diffusion", required=True, help="the diffusion run")
    p.add_argument("--ar", required=True, help="the AR twin")
    p.add_argument("--prompt", default="", help="text both continue")
    p.add_argument("--length", type=int, default=128, help="tokens each writes")
    p.add_argument("--steps", type=int, default=None, help="diffusion steps (default: one per token)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    add_sampler_flags(p)
    p.set_defaults(func=cmd_race)
