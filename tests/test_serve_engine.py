"""The engine behind `dlm serve`, driven directly (no HTTP): a request larger than `max_batch` runs as
several batches with the same text as in one, a small request is not stuck behind a large one, and
a request that fails or is cancelled leaves the engine serving."""

from __future__ import annotations

import threading
import time

import pytest

import dlm
from dlm.serve.engine import Engine, Job

PROMPTS = ["The ", "A", "Rome"]


@pytest.fixture(scope="module")
def pipe(tiny_twins):
    return dlm.load(tiny_twins["mdlm"])


@pytest.fixture(scope="module")
def slow_pipe(tiny_twins):
    """The tiny model made compute-bound: a forward pass costs 3 ms a row, as a CPU's cost grows
    with the rows, so timings are clear of the tiny model's fixed overheads."""
    slow = dlm.load(tiny_twins["mdlm"])
    forward = slow.model.forward

    def slow_forward(x, *args, **kwargs):
        time.sleep(0.003 * x.shape[0])
        return forward(x, *args, **kwargs)

    slow.model.forward = slow_forward
    return slow


class Reader:
    """Reads a job's events in a thread: the texts of its rows and when its last event came."""

    def __init__(self, job: Job):
        self.job, self.texts, self.error, self.ended = job, {}, None, None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while True:
            event = self.job.events.get(timeout=120)
            if event[0] == "done":
                self.texts[event[1]] = event[3]
            elif event[0] == "error":
                self.error = event[1]
            elif event[0] == "end":
                self.ended = time.perf_counter()
                return

    def wait(self) -> Reader:
        self.thread.join(timeout=120)
        assert self.ended is not None, "the request did not end"
        return self


def completion(prompts: list[str], n: int, length: int, steps: int, seed: int = 0) -> Job:
    return Job("m", "completion", length, {"steps": steps}, [seed + i for _ in prompts for i in range(n)],
               prompts=prompts)


def run(engine: Engine, job: Job) -> Reader:
    reader = Reader(job)
    engine.submit(job)
    return reader.wait()


def test_a_request_split_into_batches_has_the_text_of_one_batch(pipe) -> None:
    texts = {}
    for max_batch in (16, 4, 2):  # one batch of 6 rows (as before the split), then 4 + 2, then 2 + 2 + 2
        engine = Engine({"m": pipe}, max_batch=max_batch)
        try:
            texts[max_batch] = run(engine, completion(PROMPTS, n=2, length=12, steps=6, seed=11)).texts
            assert engine.batches_run == -(-6 // max_batch)
        finally:
            engine.close()
    assert len(texts[16]) == 6 and all(len(text) == 12 for text in texts[16].values())
    assert texts[16] == texts[4] == texts[2]


def test_a_small_request_is_not_stuck_behind_a_large_one(slow_pipe) -> None:
    engine = Engine({"m": slow_pipe}, max_batch=8)
    try:
        started = time.perf_counter()
        alone = run(engine, completion(["A"], n=1, length=8, steps=8, seed=3))
        alone_s = alone.ended - started
        large_job = completion(["The "], n=32, length=24, steps=24)  # 32 rows: 4 batches of 8, in turn
        large = Reader(large_job)
        large_started = time.perf_counter()
        engine.submit(large_job)
        while not engine.running_rows():
            time.sleep(0.005)
        started = time.perf_counter()
        small = run(engine, completion(["A"], n=1, length=8, steps=8, seed=3))
        small_s = small.ended - started
        large.wait()
        large_s = large.ended - large_started
    finally:
        engine.close()
    print(f"\nsmall request alone {alone_s:.2f} s, beside a 32-row one {small_s:.2f} s; the large one {large_s:.2f} s")
    assert small.texts == alone.texts  # its own seed: the same text whoever shares the engine
    assert len(large.texts) == 32 and engine.batches_run == 1 + 4 + 1
    # Before the fair scheduler the small request took a step of all 32 rows for each of its own
    # (about a third of the large one's time); now it gets half the engine.
    assert small.ended < large.ended and small_s < large_s / 5, (small_s, large_s)


def test_a_failed_or_cancelled_request_leaves_the_engine_serving(slow_pipe) -> None:
    engine = Engine({"m": slow_pipe}, max_batch=2)
    try:
        bad = Job("m", "completion", 8, {"steps": 4, "sampler": "bogus"}, [0], prompts=["A"])
        assert "sampler" in run(engine, bad).error
        gone = completion(["The "], n=8, length=24, steps=24)  # 4 batches of 2, about 0.2 s each
        engine.submit(gone)
        while not engine.running_rows():
            time.sleep(0.005)
        gone.cancelled.set()  # the client went away: its running batch stops, its other rows never start
        deadline = time.time() + 30
        while (engine.running_rows() or engine.waiting_requests()) and time.time() < deadline:
            time.sleep(0.01)
        assert engine.running_rows() == 0 and engine.waiting_requests() == 0 and engine.batches_run <= 2
        events = []
        while not gone.events.empty():
            events.append(gone.events.get_nowait()[0])
        assert "done" not in events and "end" not in events
        assert len(run(engine, completion(["A"], n=1, length=8, steps=4)).texts) == 1
    finally:
        engine.close()
