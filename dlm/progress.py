"""Progress of long loops: a tqdm bar on a terminal, plain lines in a log.

A tqdm bar redraws itself with carriage returns. Redirected to a file (a log, a SLURM job), those
redraws pile up: a 10-minute training log became 7 "lines" holding 73 KB of bars. When the stream
is not a terminal, `Progress` writes instead one newline-terminated line every `interval` seconds
(30 by default) with the count, rate, elapsed time, time left and the bar's postfix (loss, tok/s,
…), and a closing line. A loop shorter than the interval and not meant to stay (`leave=False`)
writes nothing.

Two environment variables override the choice:
    DLM_PROGRESS=auto|bar|lines|off   auto (default): bar on a terminal, lines otherwise
    DLM_PROGRESS_INTERVAL=SECONDS     seconds between lines (default 30; 0: a line per update)
Messages passed to `write` are printed in every mode, `off` included: they are results, not progress.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO, TypeVar

from tqdm import tqdm

from dlm.errors import DlmError

MODES = ("auto", "bar", "lines", "off")
DEFAULT_INTERVAL_S = 30.0
T = TypeVar("T")


def progress_mode(stream: TextIO, requested: str | None = None) -> str:
    """'bar', 'lines' or 'off' for `stream`: `requested`, else $DLM_PROGRESS, else by whether it is a TTY."""
    mode = (requested or os.environ.get("DLM_PROGRESS") or "auto").strip().lower()
    if mode not in MODES:
        raise DlmError(f"DLM_PROGRESS={mode!r} is not one of {', '.join(MODES)}")
    if mode != "auto":
        return mode
    try:
        return "bar" if stream.isatty() else "lines"
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return "lines"


def line_interval() -> float:
    """Seconds between progress lines: $DLM_PROGRESS_INTERVAL, else 30."""
    text = os.environ.get("DLM_PROGRESS_INTERVAL", "").strip()
    if not text:
        return DEFAULT_INTERVAL_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also rejects nan
        raise DlmError(f"DLM_PROGRESS_INTERVAL={text!r} must be a number of seconds ≥ 0")
    return seconds


class Progress:
    """The part of tqdm's interface dlm uses (update, set_postfix, write, close, a settable total),
    drawn as a bar or written as lines (see the module docstring)."""

    def __init__(self, total: float | None = None, *, desc: str = "", unit: str = "it", initial: int = 0,
                 unit_scale: bool = False, leave: bool = True, enabled: bool = True, file: TextIO | None = None,
                 mode: str | None = None, interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.file = file if file is not None else sys.stderr  # looked up now: tests swap sys.stderr
        self.mode = progress_mode(self.file, mode) if enabled else "off"
        self.desc, self.unit, self.unit_scale, self.leave = desc, unit, unit_scale, leave
        self.n = self.initial = self._last_n = initial
        self.postfix: dict[str, str] = {}
        self.interval = line_interval() if interval is None and self.mode == "lines" else interval or 0.0
        self._total, self._clock, self._lines_written, self._closed = total, clock, 0, False
        self.started = self._last_line = clock()
        self._bar = (tqdm(total=total, initial=initial, desc=desc or None, unit=unit, unit_scale=unit_scale,
                          leave=leave, dynamic_ncols=True, file=self.file) if self.mode == "bar" else None)

    @property
    def total(self) -> float | None:
        return self._total

    @total.setter
    def total(self, value: float | None) -> None:
        self._total = value
        if self._bar is not None:
            self._bar.total = value
            self._bar.refresh()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.mode == "lines" and self._clock() - self._last_line >= self.interval:
            self._write_line()

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """Replace the postfix (as tqdm does). A line shows the postfix set before its update."""
        self.postfix = {k: str(v) for k, v in {**(ordered_dict or {}), **kwargs}.items()}
        if self._bar is not None:
            self._bar.set_postfix(self.postfix)

    def write(self, message: str, file: TextIO | None = None) -> None:
        """Print a message (to stdout by default, as tqdm.write does) without breaking the bar."""
        if self._bar is not None:
            self._bar.write(message, file=file)
        else:
            print(message, file=file if file is not None else sys.stdout, flush=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.mode == "lines" and (self.leave or self._lines_written) and self.n > self.initial:
            self._write_line(final=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def line(self, final: bool = False) -> str:
        """One progress line, e.g. 'train: 120/1000 step (12%), 2.1 step/s, 00:57 elapsed, 06:59 left | loss=3.2'."""
        now = self._clock()
        elapsed = now - self.started
        # The pace since the previous line: a slow first step (compilation) weighs on one line only.
        since, done = (self.started, self.n - self.initial) if final else (self._last_line, self.n - self._last_n)
        rate = done / (now - since) if now > since else None
        parts = [self._count()]
        if rate is not None:
            parts.append(f"{self._rate(rate)} {self.unit}/s")
        parts.append(f"{tqdm.format_interval(elapsed)} elapsed")
        if not final and self._total and rate:
            parts.append(f"{tqdm.format_interval(max(self._total - self.n, 0) / rate)} left")
        text = f"{self.desc}: " if self.desc else ""
        text += ("done, " if final else "") + ", ".join(parts)
        if self.postfix:
            text += " | " + " ".join(f"{k}={v}" for k, v in self.postfix.items())
        return text

    def _count(self) -> str:
        if not self._total:
            return f"{self._number(self.n)} {self.unit}"
        return f"{self._number(self.n)}/{self._number(self._total)} {self.unit} ({100 * self.n / self._total:.0f}%)"

    def _number(self, value: float) -> str:
        return tqdm.format_sizeof(value) if self.unit_scale else f"{value:,.0f}"

    def _rate(self, rate: float) -> str:
        if self.unit_scale:
            return tqdm.format_sizeof(rate)
        return f"{rate:,.0f}" if rate >= 100 else f"{rate:.3g}"

    def _write_line(self, final: bool = False) -> None:
        print(self.line(final), file=self.file, flush=True)
        self._last_line, self._last_n, self._lines_written = self._clock(), self.n, self._lines_written + 1


def track(items: Iterable[T], total: int | None = None, **options: Any) -> Iterator[T]:
    """Iterate over `items` with a `Progress` (tqdm(items) for dlm): `options` as Progress takes them."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(total, **options) as bar:
        for item in items:
            yield item
            bar.update(1)
