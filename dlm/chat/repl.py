"""`dlm chat`: talk to a chat fine-tuned run in the terminal, watching each reply denoise in place.

    you> What news from Padua?
    ROMEO (diffusion, 64 steps)> ___ love, a ___ ... (redrawn every step) ... then the final reply

Commands: /reset (forget the conversation), /steps N, /sampler NAME, /system TEXT, /help, /quit.
Ctrl-D (end of input) leaves cleanly; Ctrl-C stops the reply being generated. With input that is
not a terminal (a pipe, a test) the intermediate frames are not drawn, only the replies.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from typing import TextIO

from dlm.errors import DlmError
from dlm.inference import Pipeline
from dlm.sampling.config import ORDERS

HELP = ("commands: /reset (new conversation), /steps N (denoising steps), /sampler "
        f"{'|'.join(ORDERS)}, /system TEXT (a system line), /help, /quit — Ctrl-D leaves")


class ChatSession:
    """The conversation so far and the sampling settings the commands change."""

    def __init__(self, pipe: Pipeline, options: dict, system: str | None = None, max_new_tokens: int | None = None):
        self.pipe, self.options, self.system, self.max_new_tokens = pipe, dict(options), system, max_new_tokens
        self.messages: list[dict] = []

    def conversation(self) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.messages

    def command(self, line: str) -> str | None:
        """Apply a /command; returns what to print, or None to quit."""
        name, _, arg = line[1:].partition(" ")
        arg = arg.strip()
        if name in ("quit", "exit"):
            return None
        if name == "reset":
            self.messages = []
            return "(new conversation)"
        if name == "steps":
            if not arg.isdigit() or int(arg) < 1:
                return "usage: /steps N (a positive number of denoising steps)"
            self.options["steps"] = int(arg)
            return f"(steps: {arg})"
        if name == "sampler":
            if arg not in ORDERS:
                return f"usage: /sampler {'|'.join(ORDERS)}"
            self.options["sampler"] = arg
            return f"(sampler: {arg})"
        if name == "system":
            self.system = arg or None
            return f"(system: {arg or 'none'})"
        return HELP

    def reply(self, text: str, show: Callable[[str], None] | None = None) -> str:
        """The model's answer to `text` (added to the conversation with it)."""
        self.messages.append({"role": "user", "content": text})
        answer = ""
        try:
            for _, partial in self.pipe.chat_stream(self.conversation(), self.max_new_tokens, **self.options):
                answer = partial
                if show is not None:
                    show(partial)
        except KeyboardInterrupt:
            self.messages.pop()
            raise
        self.messages.append({"role": "assistant", "content": answer})
        return answer


def one_line(text: str, width: int) -> str:
    flat = text.replace("\n", " / ")
    return flat if len(flat) <= width else "…" + flat[-(width - 1):]


def run_repl(session: ChatSession, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> int:
    live = stdout.isatty()
    name = "dlm"
    print(f"dlm chat — {'AR twin' if session.pipe.is_autoregressive else 'diffusion'} model "
          f"{session.pipe.checkpoint}; /help for commands, Ctrl-D to leave", file=stdout)
    while True:
        if live:
            print("you> ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line:  # Ctrl-D / end of input
            if live:
                print(file=stdout)
            return 0
        line = line.rstrip("\n")
        if not line.strip():
            continue
        if line.startswith("/"):
            said = session.command(line)
            if said is None:
                return 0
            print(said, file=stdout, flush=True)
            continue
        width = max(20, shutil.get_terminal_size((100, 20)).columns - len(name) - 3)

        def show(partial: str, width: int = width) -> None:
            stdout.write(f"\r\x1b[K{name}> {one_line(partial, width)}")
            stdout.flush()

        try:
            answer = session.reply(line, show if live else None)
        except KeyboardInterrupt:
            print("\n(stopped)", file=stdout, flush=True)
            continue
        except DlmError as e:
            print(f"\ndlm: error: {e}", file=stdout, flush=True)
            continue
        if live:
            stdout.write("\r\x1b[K")
        print(f"{name}> {answer}", file=stdout, flush=True)
