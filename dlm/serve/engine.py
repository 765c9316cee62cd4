"""The generation engine behind `dlm serve`: one worker thread owns the models; requests wait in a
bounded queue, are cut into batches of at most `max_batch` rows, and share the worker fairly.

Rows of requests for the same model, kind (completion or chat), canvas length and sampler settings
run as one batch: every row draws from its own seed, so a row's text is the same alone, batched
with other requests, or in any slice of its own request. A request with more rows than
`max_batch` runs as several batches, one after another (never two of one request at once: that
would take more memory and slots for no more throughput, since every batch is its own forward).

Scheduling is fair by request, in engine time (each request counts the seconds of the steps that
advanced it): the worker always steps the running batch whose request has had the least, so a
small request that arrives while a large one runs gets half the engine and finishes in about
twice its time alone, not after the large one. A request starts at the least time any running
request has had (it gets no credit for time it was not there), and free slots go to the waiting
request that has had the least. Between denoising steps the worker hands each request its events
— the text that is final so far (the longest fully decoded prefix: committed tokens never change
without remasking or editing) and, when asked for, the whole canvas — through a thread-safe queue
that the request's HTTP handler reads. A request whose client went away is cancelled: its rows
stop being reported, its batches stop decoding and its waiting rows are dropped.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from dlm.inference import Pipeline
from dlm.runtime import autocast


class QueueFull(Exception):
    """Too many requests are waiting; the client should retry later (HTTP 429)."""


@dataclass
class Job:
    model: str
    kind: str
    """'completion' (text continues `prompts`) or 'chat' (`messages`)."""
    length: int
    """Tokens of room after each prompt (completions); None-like 0 for chat: the rest of the context."""
    options: dict
    """SamplerConfig fields (steps, sampler, temperature, …), the seed excepted."""
    seeds: list[int]
    """One per row (completions: one row per prompt × n, prompt-major)."""
    prompts: list[str] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)
    frames: bool = False
    align: int = 0
    """Block diffusion: the prompts' length modulo the block size (batches share it)."""
    events: queue.Queue = field(default_factory=queue.Queue)
    """Events for the HTTP side: ('delta', row, text), ('frame', row, dict), ('done', row, finish_reason,
    text, tokens), ('error', message), then ('end',)."""
    cancelled: threading.Event = field(default_factory=threading.Event)
    prompt_tokens: int = 0
    # The engine's bookkeeping (worker thread only).
    served: float = 0.0
    """Seconds of engine steps that advanced this request (its fair-share clock)."""
    next_row: int = 0
    """Rows before this one have been handed to a batch."""
    rows_done: int = 0
    busy: bool = False
    """One of its batches is running."""
    arrival: int = 0

    @property
    def rows(self) -> int:
        return len(self.seeds)

    def row_prompt(self, row: int) -> str:
        return self.prompts[row // (len(self.seeds) // len(self.prompts))]

    def batch_key(self) -> tuple:
        frozen = tuple(sorted((k, v) for k, v in self.options.items()))
        # Chat canvases depend on each conversation's length: they batch only with themselves.
        return (self.model, self.kind, self.length, frozen, id(self) if self.kind == "chat" else None, self.align)


@dataclass
class Batch:
    pieces: list[tuple[Job, int, int]]
    """(request, first row, end row): rows [first, end) of each request in this batch."""
    steps: Iterator[None] | None = None
    last_turn: int = 0

    @property
    def jobs(self) -> list[Job]:
        return [job for job, _, _ in self.pieces]

    @property
    def rows(self) -> int:
        return sum(end - first for _, first, end in self.pieces)

    def live(self) -> list[Job]:
        return [job for job in self.jobs if not job.cancelled.is_set()]


class Engine:
    def __init__(self, pipes: dict[str, Pipeline], max_batch: int = 16, max_queue: int = 64, max_running: int = 4):
        self.pipes, self.max_batch, self.max_running = pipes, max_batch, max_running
        self.max_queue = max_queue
        self.waiting: queue.Queue[Job] = queue.Queue()
        self._pending: list[Job] = []  # taken from the queue, rows left to hand out
        self._running: list[Batch] = []
        self._clock = 0.0  # the least engine time a running request has had; newcomers start here
        self._arrivals = itertools.count()
        self._turns = itertools.count(1)
        self._thread = threading.Thread(target=self._work, name="dlm-engine", daemon=True)
        self._stop = threading.Event()
        self.batches_run = 0
        self.rows_run = 0
        self.cancelled_batches = 0
        """Batches stopped early because every request in them had gone away."""
        self._thread.start()

    def submit(self, job: Job) -> None:
        if self.waiting_requests() >= self.max_queue:
            raise QueueFull
        self.waiting.put_nowait(job)

    def waiting_requests(self) -> int:
        """Requests with no batch running: queued, or between two of their batches."""
        return self.waiting.qsize() + sum(not job.busy for job in list(self._pending))

    def running_rows(self) -> int:
        return sum(batch.rows for batch in list(self._running))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    # --- the worker ------------------------------------------------------------------------------

    def _work(self) -> None:
        while not self._stop.is_set():
            self._take_arrivals(block=not self._running and not self._pending)
            self._admit()
            for batch in [b for b in self._running if not b.live()]:  # every client went away
                self._finish(batch)
                self.cancelled_batches += 1
            if self._running:
                self._step(min(self._running, key=self._priority))

    def _take_arrivals(self, block: bool) -> None:
        try:
            first = self.waiting.get(timeout=0.1) if block else self.waiting.get_nowait()
        except queue.Empty:
            return
        for job in itertools.chain([first], _drain(self.waiting)):
            job.served, job.arrival = self._clock, next(self._arrivals)
            self._pending.append(job)

    def _admit(self) -> None:
        """Fill free slots with batches: led by the waiting request that has had the least engine
        time, joined by whole requests that can share its canvas."""
        self._pending = [job for job in self._pending if not job.cancelled.is_set()]
        while len(self._running) < self.max_running:
            ready = sorted((job for job in self._pending if not job.busy), key=lambda job: (job.served, job.arrival))
            if not ready:
                return
            leader = ready[0]
            pieces = [(leader, leader.next_row, min(leader.rows, leader.next_row + self.max_batch))]
            rows = pieces[0][2] - pieces[0][1]
            for job in ready[1:]:
                left = job.rows - job.next_row
                if job.batch_key() == leader.batch_key() and rows + left <= self.max_batch:
                    pieces.append((job, job.next_row, job.rows))
                    rows += left
            for job, _, end in pieces:
                job.next_row, job.busy = end, True
                job.served = max(job.served, self._clock)  # no credit for time spent waiting for a slot
                if end == job.rows:
                    self._pending.remove(job)
            batch = Batch(pieces)
            batch.steps = self._run(batch)
            self._running.append(batch)

    def _priority(self, batch: Batch) -> tuple[float, int]:
        # The batch of the request that has had the least; among equals, the one stepped longest ago.
        # (A batch whose last client left since the worker looked goes last; the next turn drops it.)
        return min((job.served for job in batch.live()), default=float("inf")), batch.last_turn

    def _step(self, batch: Batch) -> None:
        batch.last_turn = next(self._turns)
        started = time.perf_counter()
        try:
            next(batch.steps)
            finished = False
        except StopIteration:
            finished = True
        except Exception as e:  # a bad request must not take the server down
            finished = True
            for job in batch.jobs:
                job.events.put(("error", f"{type(e).__name__}: {e}"))
                job.events.put(("end",))
                job.cancelled.set()  # its rows still waiting are dropped
        spent = time.perf_counter() - started
        for job in batch.jobs:
            job.served += spent
        if finished:
            self._finish(batch)
        live = [job.served for b in self._running for job in b.live()]
        if live:
            self._clock = max(self._clock, min(live))

    def _finish(self, batch: Batch) -> None:
        self._running.remove(batch)
        if batch.steps is not None:
            batch.steps.close()
        for job in batch.jobs:
            job.busy = False

    def _run(self, batch: Batch):
        """A generator: one denoising step of the batch per `next`, events to its jobs as it goes."""
        first = batch.jobs[0]
        pipe = self.pipes[first.model]
        owners = [(job, k) for job, start, end in batch.pieces for k in range(start, end)]  # row → (job, its row)
        if first.kind == "chat":
            decoder, end_id = pipe.chat_decoder(first.messages, first.length or None, seed=first.seeds[0],
                                                **first.options)
        else:
            prompts = [job.row_prompt(k) for job, k in owners]
            seeds = [job.seeds[k] for job, k in owners]
            decoder = pipe.decoder(prompts, first.length, 1, None, seeds, **first.options)
            end_id = pipe.tokenizer.eos_id
        generated = decoder.result().generated  # (B, T) which columns are the sampler's
        shift = 1 if pipe.is_autoregressive else 0  # the AR decoder's canvas has a [BOS] column first
        sent = [""] * len(owners)
        texts = RowText(pipe, generated, end_id)
        self.batches_run += 1
        self.rows_run += len(owners)
        steps = decoder.steps()
        while True:
            with torch.no_grad(), autocast(pipe.device, pipe.dtype):
                state = next(steps, None)
            if state is None:
                break
            tokens, committed = state.tokens[:, shift:], state.committed[:, shift:]
            for row, (job, k) in enumerate(owners):
                if job.cancelled.is_set():
                    continue
                final = texts.final_prefix(tokens[row], row)
                if len(final) > len(sent[row]):
                    job.events.put(("delta", k, final[len(sent[row]):]))
                    sent[row] = final
                if job.frames:
                    job.events.put(("frame", k, texts.frame(tokens[row], committed[row], row, state)))
            yield
        result = decoder.result()
        for row, (job, k) in enumerate(owners):
            text, ended = texts.reply(result.tokens[row], row)
            if len(text) > len(sent[row]):
                job.events.put(("delta", k, text[len(sent[row]):]))
            job.events.put(("done", k, "stop" if ended else "length", text, texts.count(result.tokens[row], row)))
        for job, start, end in batch.pieces:
            job.rows_done += end - start
            if job.rows_done == job.rows:
                job.events.put(("end",))


def _drain(waiting: queue.Queue):
    while True:
        try:
            yield waiting.get_nowait()
        except queue.Empty:
            return


class RowText:
    """Text views of one row of a canvas: what is final, the frame, the reply."""

    def __init__(self, pipe: Pipeline, generated: torch.Tensor, end_id: int):
        self.pipe, self.end_id = pipe, end_id
        self.columns = [g.nonzero().flatten().tolist() for g in generated]  # generated columns of each row
        tok = pipe.tokenizer
        self.mask, self.hidden = tok.mask_id, set(tok.reserved_ids)

    def _ids(self, tokens: torch.Tensor, row: int) -> list[int]:
        return tokens[self.columns[row]].tolist()

    def final_prefix(self, tokens: torch.Tensor, row: int) -> str:
        ids = self._ids(tokens, row)
        prefix = []
        for i in ids:
            if i == self.mask or i == self.end_id:
                break
            prefix.append(i)
        return self.pipe.tokenizer.decode([i for i in prefix if i not in self.hidden])

    def frame(self, tokens: torch.Tensor, committed: torch.Tensor, row: int, state) -> dict:
        """The row's generated region: each token's text (None for a [MASK]) and which were just committed."""
        ids = self._ids(tokens, row)
        committed = committed[self.columns[row]]
        pieces = [None if i == self.mask else ("" if i in self.hidden and i != self.end_id
                                                else self.pipe.tokenizer.decode([i])) for i in ids]
        return {"step": state.step, "tokens": pieces, "committed": committed.nonzero().flatten().tolist(),
                "forward_passes": state.forward_passes, "time": time.time()}

    def reply(self, tokens: torch.Tensor, row: int) -> tuple[str, bool]:
        ids = self._ids(tokens, row)
        ended = self.end_id in ids
        if ended:
            ids = ids[:ids.index(self.end_id)]
        return self.pipe.tokenizer.decode([i for i in ids if i not in self.hidden]), ended

    def count(self, tokens: torch.Tensor, row: int) -> int:
        ids = self._ids(tokens, row)
        return ids.index(self.end_id) + 1 if self.end_id in ids else len(ids)

