"""`dlm serve` with the official openai client: models, completions, chat, streaming, the diffusion
extras and frames, errors, the request limits and their flags, the API key, a client that leaves,
and a load of concurrent streams. The engine's scheduling is tested in test_serve_engine.py."""

from __future__ import annotations

import argparse
import json
import resource
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="dlm serve needs the optional fastapi package (pip install 'dlm[serve]')")
openai = pytest.importorskip("openai", reason="the API tests use the official openai client")
httpx = pytest.importorskip("httpx", reason="the raw streaming tests use httpx")

import dlm  # noqa: E402
from dlm.cli import main  # noqa: E402
from dlm.serve.app import ApiError, Limits, create_app, parse_request  # noqa: E402
from dlm.serve.limits import add_limit_flags, limits_from_args  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """uvicorn in a thread, on a free loopback port."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline, "the server did not start"
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def client(self, key: str = "none"):
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=120)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def runs(tiny_twins, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve")
    chats = root / "chats.jsonl"
    chats.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": "The cat sat."},
                                                         {"role": "assistant", "content": "On the mat."}]})
                               for _ in range(6)))
    assert main(["finetune", "--base", str(tiny_twins["mdlm"]), "--chat", "--data", str(chats), "--out",
                 str(root / "chat"), "--max-steps", "10", "--quiet"]) == 0
    return {"mdlm": tiny_twins["mdlm"], "ar": tiny_twins["ar"], "chat": root / "chat"}


@pytest.fixture(scope="module")
def server(runs):
    pipes = {name: dlm.load(path) for name, path in runs.items()}
    limits = Limits(max_tokens=48, max_steps=64, max_prompts=8, max_request_tokens=256)
    server = Server(create_app(pipes, limits=limits, max_batch=8, max_queue=48))
    yield server
    server.stop()


def test_models_list_every_run(server) -> None:
    models = {m.id: m for m in server.client().models.list().data}
    assert set(models) == {"mdlm", "ar", "chat"}
    assert models["ar"].model_extra["dlm"]["objective"] == "ar" and models["chat"].model_extra["dlm"]["chat"]


def test_completions_with_diffusion_extras(server) -> None:
    client = server.client()
    result = client.completions.create(model="mdlm", prompt="The ", max_tokens=20, seed=3,
                                       extra_body={"steps": 10, "sampler": "margin", "block_length": 10})
    (choice,) = result.choices
    assert len(choice.text) == 20 and choice.finish_reason == "length"
    assert result.usage.prompt_tokens == 4 and result.usage.completion_tokens == 20
    # A seed fixes the text, whatever else is in the batch.
    again = client.completions.create(model="mdlm", prompt="The ", max_tokens=20, seed=3,
                                      extra_body={"steps": 10, "sampler": "margin", "block_length": 10})
    assert again.choices[0].text == choice.text
    several = client.completions.create(model="mdlm", prompt=["The ", "A"], max_tokens=8, n=2, seed=3,
                                        extra_body={"steps": 4})
    assert len(several.choices) == 4 and sorted(c.index for c in several.choices) == [0, 1, 2, 3]
    ar = client.completions.create(model="ar", prompt="The ", max_tokens=12, seed=0)
    assert len(ar.choices[0].text) == 12


def test_streaming_gives_the_same_text_as_a_whole_answer(server) -> None:
    client = server.client()
    options = {"model": "mdlm", "prompt": "The ", "max_tokens": 24, "seed": 7, "extra_body": {"steps": 12}}
    whole = client.completions.create(**options).choices[0].text
    chunks = list(client.completions.create(stream=True, **options))
    assert "".join(c.choices[0].text for c in chunks) == whole
    assert chunks[-1].choices[0].finish_reason == "length" and len(chunks) >= 2


def test_frames_show_the_canvas_after_every_step(server) -> None:
    body = {"model": "mdlm", "prompt": "A", "max_tokens": 16, "steps": 8, "stream": True, "dlm_frames": True, "seed": 1}
    frames = []
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                if "dlm_frame" in chunk:
                    frames.append(chunk["dlm_frame"])
    assert [f["step"] for f in frames] == list(range(1, 9))
    assert all(len(f["tokens"]) == 16 for f in frames)
    masks = [sum(t is None for t in f["tokens"]) for f in frames]
    assert masks == sorted(masks, reverse=True) and masks[-1] == 0  # the canvas fills, step by step
    assert sum(len(f["committed"]) for f in frames) == 16  # every position committed exactly once


def test_chat_completions(server) -> None:
    client = server.client()
    messages = [{"role": "user", "content": "The cat sat."}]
    reply = client.chat.completions.create(model="chat", messages=messages, seed=0, extra_body={"steps": 16})
    assert reply.choices[0].message.role == "assistant" and isinstance(reply.choices[0].message.content, str)
    assert reply.choices[0].finish_reason in ("stop", "length") and reply.usage.prompt_tokens > 0
    streamed = list(client.chat.completions.create(model="chat", messages=messages, seed=0, stream=True,
                                                   extra_body={"steps": 16}))
    assert streamed[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == reply.choices[0].message.content
    with pytest.raises(openai.BadRequestError, match="no chat tokens"):
        client.chat.completions.create(model="mdlm", messages=messages)


@pytest.mark.parametrize(("body", "status", "fragment"), [
    ({"model": "nope", "prompt": "x"}, 404, "not served here"),
    ({"model": "mdlm", "prompt": "x", "max_tokens": 500}, 400, "max_tokens=500 must be between 1 and 48"),
    ({"model": "mdlm", "prompt": "x" * 70, "max_tokens": 8}, 400, "exceeds the model's context"),
    ({"model": "mdlm", "prompt": "x", "steps": 999}, 400, "steps=999 must be between 1 and 64"),
    ({"model": "mdlm", "prompt": "x", "sampler": "bogus"}, 400, "sampler='bogus' is not one of"),
    ({"model": "mdlm", "prompt": "x", "temperature": "hot"}, 400, "'temperature' must be a number"),
    ({"model": "mdlm", "prompt": "x", "stop": ["."]}, 400, "'stop' is not supported"),
    ({"model": "mdlm", "prompt": 5}, 400, "prompt must be a string or a list of strings"),
    ({"model": "mdlm", "prompt": "x", "n": 99}, 400, "n=99 must be between 1 and 8"),
    ({"model": "mdlm", "prompt": "Ω"}, 400, "not in the tokenizer's vocabulary"),
    ({"model": "mdlm", "prompt": ["x"] * 9}, 400,
     "this request has 9 prompts; the limit per request is 8 (dlm serve --max-prompts)"),
    ({"model": "mdlm", "prompt": ["x"] * 4, "n": 2, "max_tokens": 40}, 400,
     "this request asks for 4 prompts × n=2 × 40 tokens = 320 tokens; the limit per request is 256 "
     "(dlm serve --max-request-tokens)"),
    ({"model": "mdlm", "prompt": "x", "n": 8, "max_tokens": 8, "steps": 40}, 400,
     "1 prompt × n=8 × 40 steps = 320 tokens; the limit per request is 256"),
])
def test_bad_requests_get_openai_style_errors(server, body: dict, status: int, fragment: str) -> None:
    response = httpx.post(f"{server.url}/v1/completions", json=body, timeout=30)
    assert response.status_code == status
    error = response.json()["error"]
    assert fragment in error["message"] and error["type"] and "param" in error


def test_a_request_over_the_limit_says_how_to_fit(server) -> None:
    body = {"model": "mdlm", "prompt": ["x"] * 8, "max_tokens": 33}  # 8 × 33 = 264 > 256
    response = httpx.post(f"{server.url}/v1/completions", json=body, timeout=30)
    error = response.json()["error"]
    assert response.status_code == 400 and error["code"] == "request_too_large" and error["param"] == "max_tokens"
    assert "send fewer prompts" in error["message"]
    with pytest.raises(openai.BadRequestError, match="--max-request-tokens"):
        server.client().completions.create(model="mdlm", prompt=["x"] * 8, max_tokens=33)


def test_a_request_at_the_limit_is_answered(server) -> None:
    engine = server.server.config.app.state.engine
    batches = engine.batches_run
    # 4 prompts × n=4 × 16 tokens = 256, the limit: 16 rows, two batches of max_batch=8.
    result = server.client().completions.create(model="mdlm", prompt=["The ", "A", "he", "Rome"], n=4,
                                                max_tokens=16, seed=5, extra_body={"steps": 4})
    assert sorted(c.index for c in result.choices) == list(range(16))
    assert all(len(c.text) == 16 for c in result.choices) and result.usage.completion_tokens == 256
    assert engine.batches_run - batches == 2
    # The AR twin takes one step per token whatever `steps` says, so its steps do not count.
    ar = server.client().completions.create(model="ar", prompt="The ", n=8, max_tokens=8, seed=0,
                                            extra_body={"steps": 64})
    assert len(ar.choices) == 8


def test_chat_counts_the_room_of_its_reply(server) -> None:
    pipes = server.server.config.app.state.engine.pipes
    body = {"model": "chat", "messages": [{"role": "user", "content": "The cat sat."}]}
    fragment = r"1 reply × \d+ tokens = .*\(the default is the rest of the context\)"
    with pytest.raises(ApiError, match=fragment) as caught:
        parse_request(body, pipes, Limits(max_request_tokens=16), chat=True)
    assert caught.value.status == 400
    assert parse_request({**body, "max_tokens": 16}, pipes, Limits(max_request_tokens=16), chat=True).length == 16


def test_the_limits_are_flags() -> None:
    parser = argparse.ArgumentParser()
    add_limit_flags(parser)
    limits = limits_from_args(parser.parse_args(["--max-prompts", "3", "--max-request-tokens", "100"]))
    assert (limits.max_prompts, limits.max_request_tokens, limits.max_tokens) == (3, 100, Limits().max_tokens)
    assert all(flag in parser.format_help() for flag in ("--max-tokens-limit", "--max-steps-limit", "--max-prompts",
                                                          "--max-request-tokens"))
    with pytest.raises(SystemExit):
        parser.parse_args(["--max-request-tokens", "0"])


def test_not_json_is_a_400(server) -> None:
    response = httpx.post(f"{server.url}/v1/completions", content=b"{not json", timeout=30,
                          headers={"content-type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]


def test_the_api_key(runs) -> None:
    server = Server(create_app({"mdlm": dlm.load(runs["mdlm"])}, api_key="s3cret"))
    try:
        with pytest.raises(openai.AuthenticationError):
            server.client("wrong").models.list()
        assert [m.id for m in server.client("s3cret").models.list().data] == ["mdlm"]
        assert httpx.get(f"{server.url}/", timeout=30).status_code == 200  # the page itself is public
    finally:
        server.stop()


def test_a_full_queue_answers_429(runs) -> None:
    server = Server(create_app({"mdlm": dlm.load(runs["mdlm"])}, max_batch=1, max_queue=1))
    body = {"model": "mdlm", "prompt": "x", "max_tokens": 32, "steps": 32}
    try:
        with ThreadPoolExecutor(12) as pool:
            statuses = list(pool.map(lambda _: httpx.post(f"{server.url}/v1/completions", json=body,
                                                          timeout=120).status_code, range(12)))
        assert 200 in statuses and 429 in statuses and set(statuses) <= {200, 429}
    finally:
        server.stop()


def test_a_client_that_leaves_frees_its_slot(server) -> None:
    engine = server.server.config.app.state.engine
    body = {"model": "mdlm", "prompt": "A", "max_tokens": 48, "steps": 64, "stream": True, "dlm_frames": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as response:
        next(response.iter_lines())  # one event, then hang up
    deadline = time.time() + 30
    while engine.running_rows() and time.time() < deadline:  # the abandoned batch stops early
        time.sleep(0.05)
    assert engine.running_rows() == 0 and engine.cancelled_batches >= 1


def test_32_concurrent_streams_all_complete(server, capsys: pytest.CaptureFixture) -> None:
    client = server.client()

    def stream(i: int) -> tuple[str, float]:
        started = time.perf_counter()
        chunks = client.completions.create(model="mdlm", prompt="The ", max_tokens=16, seed=i, stream=True,
                                           extra_body={"steps": 8})
        text = "".join(c.choices[0].text for c in chunks)
        return text, time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(stream, range(32)))
    wall = time.perf_counter() - started
    assert all(len(text) == 16 for text, _ in results)
    assert wall < 120
    latencies = sorted(t for _, t in results)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with capsys.disabled():
        print(f"\n32 concurrent streams: wall {wall:.1f} s, p50 {latencies[15]:.2f} s, p95 {latencies[30]:.2f} s, "
              f"peak RSS of the test process {peak:.0f} MB")
