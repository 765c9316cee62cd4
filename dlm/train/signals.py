"""A graceful stop: SIGTERM, SIGINT and SIGUSR1 (SLURM's pre-emption warning) ask the training loop
to finish its step, save and exit 0; a second SIGINT aborts at once."""

from __future__ import annotations

import signal


class StopFlag:
    """Installs the handlers inside `with`; `reason` is the name of the first signal received."""

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
