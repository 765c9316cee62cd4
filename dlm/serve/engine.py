"""The generation engine behind `dlm serve`: one worker thread owns the models; requests wait in a
bounded queue and are batched when they can share a canvas.

Requests for the same model, kind (completion or chat), canvas length and sampler settings run as
one batch (up to `max_batch` rows): every row draws from its own seed, so a request's text is the
same alone or batched. Between denoising steps the worker hands each request its events — the
text that is final so far (the longest fully decoded prefix: committed tokens never change without
remasking or editing) and, when asked for, the whole canvas — through a thread-safe queue that
the request's HTTP handler reads. A request whose client went away is cancelled: its rows stop
being reported, and a batch with no live request left stops decoding.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
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
    """One per row (completions: one row per prompt × n)."""
    prompts: list[str] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)
    frames: bool = False
    events: queue.Queue = field(default_factory=queue.Queue)
    """Events for the HTTP side: ('delta', row, text), ('frame', row, dict), ('done', row, finish_reason,
    text, tokens), ('error', message), then ('end',)."""
    cancelled: threading.Event = field(default_factory=threading.Event)
    prompt_tokens: int = 0

    def batch_key(self) -> tuple:
        frozen = tuple(sorted((k, v) for k, v in self.options.items()))
        # Chat canvases depend on each conversation's length: they batch only with themselves.
        return (self.model, self.kind, self.length, frozen, id(self) if self.kind == "chat" else None)


class Engine:
    def __init__(self, pipes: dict[str, Pipeline], max_batch: int = 16, max_queue: int = 64, max_running: int = 4):
        self.pipes, self.max_batch, self.max_running = pipes, max_batch, max_running
        self.max_queue = max_queue
        self.waiting: queue.Queue[Job] = queue.Queue()
        self._held: list[Job] = []  # taken from the queue, not batchable with the last batch
        self._thread = threading.Thread(target=self._work, name="dlm-engine", daemon=True)
        self._stop = threading.Event()
        self.batches_run = 0
        self.rows_run = 0
        self.cancelled_batches = 0
        """Batches stopped early because every request in them had gone away."""
        self._running: list = []  # (jobs, step generator) being decoded, round-robin
        self._thread.start()

    def submit(self, job: Job) -> None:
        if self.waiting.qsize() + len(self._held) >= self.max_queue:
            raise QueueFull
        self.waiting.put_nowait(job)

    def running_rows(self) -> int:
        return sum(len(job.seeds) for batch, _ in list(self._running) for job in batch)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    # --- the worker ------------------------------------------------------------------------------

    def _next_batch(self, timeout: float | None = None) -> list[Job]:
        """The next request and every waiting one that can share its canvas. Raises queue.Empty."""
        first = self._held.pop(0) if self._held else (self.waiting.get(timeout=timeout) if timeout
                                                     else self.waiting.get_nowait())
        batch, rows = [first], len(first.seeds)
        for pending in itertools.chain(list(self._held), self._drain()):
            if pending.batch_key() == first.batch_key() and rows + len(pending.seeds) <= self.max_batch:
                batch.append(pending)
                rows += len(pending.seeds)
                if pending in self._held:
                    self._held.remove(pending)
            elif pending not in self._held:
                self._held.append(pending)
        return batch

    def _drain(self):
        while True:
            try:
                yield self.waiting.get_nowait()
            except queue.Empty:
                return

    def _work(self) -> None:
        """Round-robin over the running batches, one denoising step each, so a long request never
        holds up a short one (or the AR twin racing a diffusion run on the page)."""
        running = self._running
        while not self._stop.is_set():
            while len(running) < self.max_running:
                try:
                    batch = self._next_batch() if running or self._held else self._next_batch_blocking()
                except queue.Empty:
                    break
                batch = [job for job in batch if not job.cancelled.is_set()]
                if batch:
                    running.append((batch, self._run(batch)))
            for entry in list(running):
                batch, steps = entry
                try:
                    next(steps)
                except StopIteration:
                    running.remove(entry)
                except Exception as e:  # a bad request must not take the server down
                    running.remove(entry)
                    for job in batch:
                        job.events.put(("error", f"{type(e).__name__}: {e}"))
                        job.events.put(("end",))

    def _next_batch_blocking(self) -> list[Job]:
        return self._next_batch(timeout=0.1)

    def _run(self, batch: list[Job]):
        """A generator: one denoising step of the batch per `next`, events to its jobs as it goes."""
        pipe = self.pipes[batch[0].model]
        first = batch[0]
        if first.kind == "chat":
            decoder, end_id = pipe.chat_decoder(first.messages, first.length or None, seed=first.seeds[0],
                                                **first.options)
        else:
            prompts = [p for job in batch for p in job.prompts for _ in range(len(job.seeds) // len(job.prompts))]
            seeds = [s for job in batch for s in job.seeds]
            decoder = pipe.decoder(prompts, first.length, 1, None, seeds, **first.options)
            end_id = pipe.tokenizer.eos_id
        owners = [(job, i) for job in batch for i in range(len(job.seeds))]  # row → (job, row within job)
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
            if all(job.cancelled.is_set() for job in batch):
                self.cancelled_batches += 1
                return
            yield
        result = decoder.result()
        for row, (job, k) in enumerate(owners):
            text, ended = texts.reply(result.tokens[row], row)
            if len(text) > len(sent[row]):
                job.events.put(("delta", k, text[len(sent[row]):]))
            job.events.put(("done", k, "stop" if ended else "length", text, texts.count(result.tokens[row], row)))
        for job in batch:
            job.events.put(("end",))


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

