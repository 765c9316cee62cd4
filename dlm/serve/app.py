"""An OpenAI-compatible HTTP API over dlm runs, and the page at / that shows text developing.

    GET  /v1/models              the loaded runs
    POST /v1/completions         text continuations (prompt: a string or a list)
    POST /v1/chat/completions    the next assistant turn (chat fine-tuned runs)
    GET  /                       the web page; GET /health

Bodies follow OpenAI's (model, prompt or messages, max_tokens, temperature, top_p, n, seed,
stream); the diffusion settings travel as extra fields with safe defaults: steps, sampler,
top_k, block_length, block_context, kv_cache, threshold, remask, repetition_penalty, eos_penalty,
stop_at_eos, schedule, speculative, drafts. With `stream: true` the answer comes as server-sent events in OpenAI's
chunk format, the text that is final so far as ordinary deltas; `dlm_frames: true` adds, in the
same chunks, a `dlm_frame` field with the whole canvas after each denoising step (masks as null),
for clients that draw it. Every bad request gets a 4xx with an OpenAI-style error object,
including one that asks for more work than the limits allow (limits.py: prompts per request, and
prompts × n × max_tokens generated tokens per request).

FastAPI is imported at the top (its route signatures are read from this module's names); the
command imports this module only when serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from dlm.data.chat import ChatTemplate, check_conversation
from dlm.errors import DlmError
from dlm.inference import Pipeline
from dlm.sampling.config import SamplerConfig
from dlm.sampling.self_speculative import check_drafts
from dlm.serve.engine import Engine, Job, QueueFull
from dlm.serve.limits import Limits

EXTRA_FIELDS = ("steps", "sampler", "top_k", "block_length", "block_context", "kv_cache", "threshold", "remask",
                "repetition_penalty", "eos_penalty", "stop_at_eos", "schedule", "speculative", "drafts")
UNSUPPORTED = {"stop": None, "logprobs": None, "echo": False, "best_of": None, "suffix": None, "tools": None,
               "presence_penalty": 0, "frequency_penalty": 0, "logit_bias": None, "response_format": None}


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class SinkToLoop:
    """The engine's events, moved onto an asyncio queue of the server's loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.queue = loop, asyncio.Queue()

    def put(self, item) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


def describe_model(name: str, pipe: Pipeline) -> dict:
    chat = "<|end|>" in pipe.tokenizer.added_tokens
    return {"id": name, "object": "model", "created": int(pipe.checkpoint.stat().st_mtime), "owned_by": "dlm",
            "dlm": {"objective": pipe.objective, "chat": chat,
                    "context": pipe.model.cfg.block_size, "checkpoint": str(pipe.checkpoint)}}


def parse_request(body, pipes: dict[str, Pipeline], limits: Limits, chat: bool) -> Job:
    """A validated Job from an OpenAI-style body, or an ApiError saying what is wrong."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    for name, default in UNSUPPORTED.items():
        if body.get(name, default) not in (default, None):
            raise ApiError(400, f"'{name}' is not supported by dlm serve", param=name, code="unsupported_parameter")
    name = body.get("model") or next(iter(pipes))
    if name not in pipes:
        raise ApiError(404, f"the model '{name}' is not served here; GET /v1/models lists them", param="model",
                       code="model_not_found")
    pipe = pipes[name]
    n = _number(body, "n", 1, int)
    if not 1 <= n <= limits.max_n:
        raise ApiError(400, f"n={n} must be between 1 and {limits.max_n}", param="n")
    context = pipe.model.cfg.block_size
    default = None if chat else min(limits.default_max_tokens, limits.max_tokens, context // 2)
    max_tokens = _number(body, "max_tokens", default, int)
    if max_tokens is not None and not 1 <= max_tokens <= min(limits.max_tokens, context - 1):
        raise ApiError(400, f"max_tokens={max_tokens} must be between 1 and {min(limits.max_tokens, context - 1)} "
                       f"(the model's context is {context} tokens)", param="max_tokens")
    options = {k: body[k] for k in EXTRA_FIELDS if body.get(k) is not None}
    steps = _number(body, "steps", None, int)
    if steps is not None:
        options["steps"] = steps
    if body.get("temperature") is not None:  # unset: the model's default (diffusion 0.8, AR 1)
        options["temperature"] = _number(body, "temperature", None, float)
    options["top_p"] = _number(body, "top_p", 1.0, float)
    if steps is not None and not 1 <= steps <= limits.max_steps:
        raise ApiError(400, f"steps={steps} must be between 1 and {limits.max_steps}", param="steps")
    try:
        SamplerConfig.from_kwargs(**options)
    except (DlmError, TypeError) as e:
        raise ApiError(400, str(e), code="invalid_sampler_option") from None
    if options.get("speculative") and (chat or not getattr(pipe, "drafts_itself", False)):
        raise ApiError(400, "speculative decoding needs a block model whose clean copy learnt next-token "
                       "prediction, continuing a prompt (not a chat turn)", param="speculative",
                       code="invalid_sampler_option")
    if options.get("drafts") and pipe.diffusion_block:
        try:
            check_drafts(options["drafts"], pipe.diffusion_block)
        except DlmError as e:
            raise ApiError(400, str(e), param="drafts", code="invalid_sampler_option") from None
    seed = _number(body, "seed", random.randrange(2**31), int)
    job = Job(name, "chat" if chat else "completion", max_tokens or 0, options, [seed + i for i in range(n)],
              frames=bool(body.get("dlm_frames", False)))
    if chat:
        if n != 1:
            raise ApiError(400, "n > 1 is not supported for chat completions", param="n")
        try:
            template = ChatTemplate(pipe.tokenizer)
            job.messages = check_conversation({"messages": body.get("messages")}, "messages")
        except DlmError as e:
            raise ApiError(400, str(e), param="messages") from None
        job.prompt_tokens = len(template.prompt(job.messages))
        # The reply's room as Pipeline.chat_decoder sets it: by default the rest of the context.
        room = max_tokens or context - len(template.prompt(job.messages, max_len=context - context // 4))
        check_work(limits, 1, "1 reply", room, steps, pipe.is_autoregressive,
                   "ask for a smaller max_tokens" + ("" if max_tokens else " (the default is the rest of the context)"))
        return job
    prompt = body.get("prompt", "")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ApiError(400, "prompt must be a string or a list of strings", param="prompt")
    if len(prompts) > limits.max_prompts:
        raise ApiError(400, f"this request has {len(prompts):,} prompts; the limit per request is "
                       f"{limits.max_prompts:,} (dlm serve --max-prompts): send them in several requests",
                       param="prompt", code="request_too_large")
    what = f"{len(prompts):,} prompt{'s' * (len(prompts) > 1)}" + (f" × n={n}" if n > 1 else "")
    check_work(limits, len(prompts) * n, what, job.length, steps, pipe.is_autoregressive,
               "send fewer prompts (or the rest in another request), a smaller n or max_tokens")
    try:
        lengths = [len(pipe.encode_prompt(p, job.length)) for p in prompts]
    except DlmError as e:
        raise ApiError(400, str(e), param="prompt",
                       code="context_length_exceeded" if "context" in str(e) else None) from None
    job.prompts, job.prompt_tokens = prompts, sum(lengths)
    block = options.get("block_length", pipe.diffusion_block)
    # aligned blocks: one prompt length modulo the block per batch (self-speculative rows go at their own pace)
    if pipe.diffusion_block and block and not pipe.speculates(options):
        offsets = {n_tokens % block for n_tokens in lengths}
        if len(offsets) > 1:
            raise ApiError(400, f"a block-diffusion model decodes blocks of {block} tokens, and these prompts' "
                           f"lengths differ modulo {block}: send them in separate requests", param="prompt")
        job.align = offsets.pop()
    job.seeds = [seed + i for _ in prompts for i in range(n)]
    return job


def check_work(limits: Limits, rows: int, what: str, tokens: int, steps: int | None, autoregressive: bool,
               fix: str) -> None:
    """Bound the work of one request: rows × the tokens each generates, or × its denoising steps
    when there are more of them (each step runs the model over the row's canvas; the AR twin takes
    one step per token, whatever `steps` says)."""
    counted, unit = tokens, "tokens"
    if steps is not None and steps > tokens and not autoregressive:
        counted, unit, fix = steps, "steps", "ask for fewer steps, or " + fix
    work = rows * counted
    if work > limits.max_request_tokens:
        raise ApiError(400, f"this request asks for {what} × {counted:,} {unit} = {work:,} tokens; the limit per "
                       f"request is {limits.max_request_tokens:,} (dlm serve --max-request-tokens): {fix}",
                       param="steps" if unit == "steps" else "max_tokens", code="request_too_large")


def _number(body: dict, name: str, default, kind):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise ApiError(400, f"'{name}' must be {'an integer' if kind is int else 'a number'}", param=name)
    return kind(value)


def create_app(pipes: dict[str, Pipeline], api_key: str | None = None, limits: Limits | None = None,
               max_batch: int = 16, max_queue: int = 64):
    limits = limits or Limits()
    engine = Engine(pipes, max_batch=max_batch, max_queue=max_queue)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        engine.close()

    app = FastAPI(title="dlm", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.engine = engine

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError):
        return JSONResponse(error.body(), status_code=error.status)

    @app.middleware("http")
    async def authorise(request: Request, call_next):
        if api_key and request.url.path.startswith("/v1/"):
            if request.headers.get("authorization", "") != f"Bearer {api_key}":
                error = ApiError(401, "a valid API key is needed: send 'Authorization: Bearer KEY'",
                                 code="invalid_api_key", kind="authentication_error")
                return JSONResponse(error.body(), status_code=401)
        return await call_next(request)

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": list(pipes), "waiting": engine.waiting_requests(),
                "running_rows": engine.running_rows(), "batches_run": engine.batches_run, "rows_run": engine.rows_run,
                "cancelled_batches": engine.cancelled_batches}

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return resources.files("dlm.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [describe_model(name, pipe) for name, pipe in pipes.items()]}

    async def run(request: Request, chat: bool):
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ApiError(400, "the request body is not valid JSON") from None
        job = parse_request(body, pipes, limits, chat)
        sink = SinkToLoop(asyncio.get_running_loop())
        job.events = sink
        try:
            engine.submit(job)
        except QueueFull:
            raise ApiError(429, "the server is busy (too many requests waiting); retry shortly",
                           code="rate_limit_exceeded", kind="rate_limit_error") from None
        created, ident = int(time.time()), f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        if body.get("stream"):
            return StreamingResponse(stream_events(job, sink, request, chat, ident, created),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        return await collect(job, sink, request, chat, ident, created)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await run(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await run(request, chat=True)

    return app


async def _events(job: Job, sink: SinkToLoop, request):
    """The job's events; cancels the job when the client goes away."""
    try:
        while True:
            try:
                event = await asyncio.wait_for(sink.queue.get(), timeout=1.0)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    job.cancelled.set()
                    return
                continue
            if event[0] == "end":
                return
            if event[0] == "error":
                raise ApiError(500, f"generation failed: {event[1]}", kind="server_error")
            yield event
    except asyncio.CancelledError:
        job.cancelled.set()
        raise


async def collect(job: Job, sink: SinkToLoop, request, chat: bool, ident: str, created: int) -> dict:
    finished: dict[int, tuple[str, str, int]] = {}
    try:
        async for event in _events(job, sink, request):
            if event[0] == "done":
                _, row, reason, text, count = event
                finished[row] = (text, reason, count)
    except asyncio.CancelledError:
        job.cancelled.set()
        raise
    if len(finished) < len(job.seeds):
        raise ApiError(499, "the client went away", kind="cancelled")
    completion_tokens = sum(f[2] for f in finished.values())
    usage = {"prompt_tokens": job.prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": job.prompt_tokens + completion_tokens}
    if chat:
        text, reason, _ = finished[0]
        return {"id": ident, "object": "chat.completion", "created": created, "model": job.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason}],
                "usage": usage}
    return {"id": ident, "object": "text_completion", "created": created, "model": job.model,
            "choices": [{"index": row, "text": text, "logprobs": None, "finish_reason": reason}
                        for row, (text, reason, _) in sorted(finished.items())], "usage": usage}


async def stream_events(job: Job, sink: SinkToLoop, request, chat: bool, ident: str, created: int):
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(row: int, text: str | None = None, reason: str | None = None, frame: dict | None = None,
              first: bool = False) -> str:
        if chat:
            delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
            choice = {"index": row, "delta": delta, "finish_reason": reason}
        else:
            choice = {"index": row, "text": text or "", "logprobs": None, "finish_reason": reason}
        body = {"id": ident, "object": kind, "created": created, "model": job.model, "choices": [choice]}
        if frame is not None:
            body["dlm_frame"] = frame
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    try:
        if chat:
            yield chunk(0, first=True)
        async for event in _events(job, sink, request):
            if event[0] == "delta":
                yield chunk(event[1], event[2])
            elif event[0] == "frame":
                yield chunk(event[1], frame=event[2])
            elif event[0] == "done":
                yield chunk(event[1], reason=event[2])
        yield "data: [DONE]\n\n"
    except ApiError as e:
        yield f"data: {json.dumps(e.body())}\n\n"
    finally:
        job.cancelled.set()  # finished, failed or abandoned: the engine stops reporting to it
