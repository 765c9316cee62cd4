"""Text developing in the terminal: `dlm sample --animate` redraws the canvas in place after every
step, and `dlm race` runs a diffusion run and its AR twin side by side (rich), with step counts
and wall times.

Both advance step by step through the samplers' streams; the race alternates one step of each, so
the two share the machine fairly, and times each one's own steps.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

import torch

from dlm.inference import Pipeline
from dlm.runtime import autocast

MASK_GLYPH = "░"


def canvas_text(pipe: Pipeline, tokens: torch.Tensor, start: int = 0) -> str:
    """One row of a canvas as text, masks drawn as ░, padding and other reserved ids left out."""
    tok, pieces = pipe.tokenizer, []
    hidden = set(tok.reserved_ids) - {tok.mask_id}
    for i in tokens[start:].tolist():
        if i == tok.mask_id:
            pieces.append(MASK_GLYPH)
        elif i not in hidden:
            pieces.append(tok.decode([i]))
    return "".join(pieces)


class InPlace:
    """Redraws a block of text in place on a terminal (ANSI: cursor up, clear to the end)."""

    def __init__(self, out: TextIO = sys.stdout):
        self.out, self.lines = out, 0

    def draw(self, text: str) -> None:
        if self.lines:
            self.out.write(f"\x1b[{self.lines}F")  # to the start of the first line drawn last time
        self.out.write("\x1b[J" + text + "\n")
        self.out.flush()
        width = 80
        try:
            import shutil

            width = shutil.get_terminal_size((80, 24)).columns
        except OSError:
            pass
        self.lines = sum(max(1, -(-len(line) // width)) for line in text.split("\n"))


def animate(pipe: Pipeline, decoder, out: TextIO = sys.stdout, delay: float = 0.0) -> None:
    """Run `decoder` (from Pipeline.decoder), redrawing its first row after every step."""
    screen = InPlace(out)
    shift = 1 if pipe.is_autoregressive else 0
    with torch.no_grad(), autocast(pipe.device, pipe.dtype):
        for state in decoder.steps():
            screen.draw(f"[step {state.step:4d}] {canvas_text(pipe, state.tokens[0], shift)}")
            if delay:
                time.sleep(delay)


@dataclass
class Runner:
    name: str
    pipe: Pipeline
    decoder: object
    steps: object = None
    text: str = ""
    step: int = 0
    passes: int = 0
    seconds: float = 0.0
    done: bool = False
    tokens: int = 0
    timeline: list = field(default_factory=list)

    def advance(self) -> None:
        if self.steps is None:
            self.steps = self.decoder.steps()
        started = time.perf_counter()
        with torch.no_grad(), autocast(self.pipe.device, self.pipe.dtype):
            state = next(self.steps, None)
        self.seconds += time.perf_counter() - started
        if state is None:
            self.done = True
            return
        shift = 1 if self.pipe.is_autoregressive else 0
        self.step, self.passes = state.step, state.forward_passes
        self.text = canvas_text(self.pipe, state.tokens[0], shift)
        self.timeline.append((self.seconds, self.text))


def race(diffusion: Pipeline, ar: Pipeline, prompt: str, length: int, options: dict, seed: int = 0,
         out: TextIO | None = None, frames: list | None = None) -> list[Runner]:
    """Both models write `length` tokens after `prompt`, one step each in turn, drawn live."""
    from rich.console import Console
    from rich.live import Live
    from rich.panel import Panel
    from rich.table import Table

    runners = [Runner("diffusion", diffusion, diffusion.decoder(prompt, length, seed=seed, **options)),
               Runner("autoregressive twin", ar, ar.decoder(prompt, length, seed=seed,
                                                           **{k: v for k, v in options.items()
                                                              if k in ("temperature", "top_k", "top_p")}))]
    console = Console(file=out) if out is not None else Console()

    def view() -> Table:
        table = Table.grid(expand=True, padding=(0, 1))
        for _ in runners:
            table.add_column(ratio=1)
        table.add_row(*(Panel(r.text or MASK_GLYPH, title=r.name, subtitle=f"step {r.step} · {r.passes} passes · "
                              f"{r.seconds:.2f} s{' · done' if r.done else ''}") for r in runners))
        return table

    with Live(view(), console=console, refresh_per_second=20, transient=False) as live:
        while not all(r.done for r in runners):
            for runner in runners:
                if not runner.done:
                    runner.advance()
            live.update(view(), refresh=True)  # every step drawn, however fast the models are
            if frames is not None:
                frames.append([(r.name, r.step, r.seconds, r.text) for r in runners])
    for r in runners:
        result = r.decoder.result()
        r.tokens = int(result.generated.sum())
    return runners
