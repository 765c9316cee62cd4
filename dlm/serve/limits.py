"""What one request to `dlm serve` may ask for, and the `dlm serve` flags that set it.

The work of a request is counted in generated tokens: rows (prompts × n) × max_tokens, where a
diffusion request that asks for more denoising steps than tokens counts its steps instead (each
step of a row runs the model over the row's whole canvas, as each token of the AR twin does). The
default, 4,096, is 32 prompts of the default 128 tokens or n=8 of 512: on the 2 CPU cores of
docs/serve.md the 4 × 192 run generated 186 tokens/s (128 tokens in 64 steps), so a request at the
limit holds 20–45 s of engine time there (seconds on a GPU), which the engine shares fairly with
the requests that arrive meanwhile (engine.py).

Only the standard library: the command registers these flags without importing FastAPI.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass
class Limits:
    max_tokens: int = 1024
    """Largest max_tokens a request may ask for (the model's context caps it too)."""
    max_steps: int = 1024
    """Largest number of denoising steps a request may ask for."""
    max_n: int = 8
    """Most completions per prompt (n)."""
    default_max_tokens: int = 128
    """max_tokens of a completion that does not say (capped by half the context)."""
    max_prompts: int = 64
    """Most prompts in one /v1/completions request (prompt given as a list)."""
    max_request_tokens: int = 4096
    """Most tokens one request may have generated: prompts × n × max_tokens (steps in place of
    max_tokens when a request asks for more steps than tokens)."""


# Limits field → (flag, help). The flags keep the names `dlm serve` has had since the start.
FLAGS = {
    "max_tokens": ("--max-tokens-limit", "largest max_tokens one request may ask for (default: %(default)s)"),
    "max_steps": ("--max-steps-limit", "largest number of denoising steps a request may ask for "
                  "(default: %(default)s)"),
    "max_prompts": ("--max-prompts", "most prompts in one /v1/completions request; more get HTTP 400 "
                    "(default: %(default)s)"),
    "max_request_tokens": ("--max-request-tokens", "most tokens one request may have generated: prompts × n × "
                           "max_tokens, with a diffusion request's steps in place of max_tokens when it asks for "
                           "more steps than tokens; more get HTTP 400 saying how to fit. Requests within it take "
                           "turns fairly in the engine (default: %(default)s)"),
}


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def add_limit_flags(parser: argparse.ArgumentParser) -> None:
    """Register the request limits as flags of `dlm serve`."""
    defaults = Limits()
    group = parser.add_argument_group("request limits", "what one request may ask for; beyond them the server "
                                      "answers HTTP 400 with an OpenAI-style error naming the limit")
    for name, (flag, text) in FLAGS.items():
        group.add_argument(flag, type=positive_int, default=getattr(defaults, name), metavar="N", help=text)


def limits_from_args(args: argparse.Namespace) -> Limits:
    return Limits(**{name: getattr(args, flag.lstrip("-").replace("-", "_")) for name, (flag, _) in FLAGS.items()})
