"""Load on `dlm serve`, measured from the client side. Two scenarios:

    python bench/serve_load.py --ckpt runs/mdlm --requests 64 --concurrency 32 --max-tokens 128 --steps 64
    python bench/serve_load.py --ckpt runs/mdlm --scenario large --large-prompts 32 --requests 8 \
        --max-tokens 128 --steps 64

Starts the server in this process on a free loopback port (uvicorn in a thread, the same app as
`dlm serve`) and sends requests through the official openai client.

load (default): `--requests` streaming requests, `--concurrency` at a time; reports wall time,
requests/s, generated tokens/s, latency (p50, p95) and time to the first streamed text (p50, p95),
the batches the engine ran, and this process's peak resident memory (server and clients together).

large: one request of `--large-prompts` prompts (each `--max-tokens` tokens, as large as the
request limit allows by default) and `--requests` small requests of one prompt, sent one after
another; reports the small requests' latency alone and while the large one runs (p50, p95), the
large one's latency, and how many small ones finished before it: how well the engine keeps other
clients moving beside a large request. Prints the report and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from machine import describe_cpu  # noqa: E402 (bench/ is on the path when run)
from markers import write_between_markers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--scenario", choices=("load", "large"), default="load")
    parser.add_argument("--requests", type=int, default=64, help="requests (large: the small ones)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--large-prompts", type=int, default=32, help="large: prompts of the large request")
    parser.add_argument("--prompt", default="ROMEO:")
    parser.add_argument("--json", default=None, help="default: bench/results/serve_load[_large].json")
    parser.add_argument("--markdown", help="write the figures between the serve_load.py markers of this page")
    args = parser.parse_args()
    args.json = args.json or f"bench/results/serve_load{'' if args.scenario == 'load' else '_large'}.json"

    import openai
    import uvicorn

    import dlm
    from dlm.serve.app import create_app
    from dlm.serve.limits import Limits

    name = Path(args.ckpt).name
    # The large request is as large as the bench asks, whatever the default limit.
    limits = Limits(max_prompts=max(args.large_prompts, Limits.max_prompts),
                    max_request_tokens=max(args.large_prompts * max(args.max_tokens, args.steps),
                                           Limits.max_request_tokens))
    app = create_app({name: dlm.load(args.ckpt)}, limits=limits, max_batch=args.max_batch,
                     max_queue=4 * args.requests)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=3600)

    def one(i: int) -> dict:
        started = time.perf_counter()
        first, text = None, ""
        for chunk in client.completions.create(model=name, prompt=args.prompt, max_tokens=args.max_tokens, seed=i,
                                               stream=True, extra_body={"steps": args.steps}):
            if chunk.choices[0].text and first is None:
                first = time.perf_counter() - started
            text += chunk.choices[0].text
        return {"latency": time.perf_counter() - started, "first": first, "chars": len(text),
                "ended": time.perf_counter()}

    one(-1)  # warm-up
    engine = app.state.engine
    batches, rows = engine.batches_run, engine.rows_run
    report = {"settings": vars(args), "machine": describe_cpu(),
              "date": time.strftime("%Y-%m-%d")}
    if args.scenario == "load":
        report.update(load(args, one))
    else:
        report.update(large(args, one, client, name, engine))
    report.update({"batches": engine.batches_run - batches, "rows": engine.rows_run - rows,
                   "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
    server.should_exit = True
    print(json.dumps(report, indent=2))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    if args.markdown:
        table = load_table if args.scenario == "load" else large_table
        marker = "bench/serve_load.py" + ("" if args.scenario == "load" else " large")
        write_between_markers(args.markdown, marker,
                              f"`python bench/serve_load.py {shlex.join(sys.argv[1:])}` ({report['date']}, "
                              f"{report['machine']}, {os.cpu_count()} CPU cores; server and clients in one process)"
                              f"\n\n{table(args, report)}")
    return 0


def load(args, one) -> dict:
    """`--requests` streams, `--concurrency` at a time."""
    started = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        results = list(pool.map(one, range(args.requests)))
    wall = time.perf_counter() - started
    latency = np.array([r["latency"] for r in results])
    first = np.array([r["first"] for r in results if r["first"] is not None])
    return {"completed": sum(r["chars"] == args.max_tokens for r in results),
            "wall_s": wall, "requests_per_s": args.requests / wall,
            "tokens_per_s": sum(r["chars"] for r in results) / wall,
            "latency_p50_s": float(np.percentile(latency, 50)), "latency_p95_s": float(np.percentile(latency, 95)),
            "first_text_p50_s": float(np.percentile(first, 50)) if len(first) else None,
            "first_text_p95_s": float(np.percentile(first, 95)) if len(first) else None}


def large(args, one, client, name: str, engine) -> dict:
    """Small requests one after another, alone, then while one large request runs."""
    alone = [one(i) for i in range(args.requests)]
    big: dict = {}

    def send_large() -> None:
        started = time.perf_counter()
        result = client.completions.create(model=name, prompt=[args.prompt] * args.large_prompts,
                                           max_tokens=args.max_tokens, seed=0, extra_body={"steps": args.steps})
        big.update(latency=time.perf_counter() - started, ended=time.perf_counter(),
                   chars=sum(len(c.text) for c in result.choices))

    thread = threading.Thread(target=send_large)
    thread.start()
    while not engine.running_rows():  # the large request has started decoding
        time.sleep(0.01)
    beside = [one(i) for i in range(args.requests)]
    thread.join()
    a, b = np.array([r["latency"] for r in alone]), np.array([r["latency"] for r in beside])
    return {"small_alone_p50_s": float(np.percentile(a, 50)), "small_alone_p95_s": float(np.percentile(a, 95)),
            "small_beside_large_p50_s": float(np.percentile(b, 50)),
            "small_beside_large_p95_s": float(np.percentile(b, 95)),
            "large_rows": args.large_prompts, "large_latency_s": big["latency"], "large_chars": big["chars"],
            "small_done_before_large": sum(r["ended"] < big["ended"] for r in beside)}


def load_table(args, r: dict) -> str:
    return ("| requests | concurrency | completed | steps | tokens each | wall | requests/s | tokens/s "
            "| latency p50 / p95 | first text p50 / p95 | engine batches | peak RSS |\n"
            "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|\n"
            f"| {args.requests} | {args.concurrency} | {r['completed']} | {args.steps} | {args.max_tokens} | "
            f"{r['wall_s']:.1f} s | {r['requests_per_s']:.2f} | {r['tokens_per_s']:,.0f} | "
            f"{r['latency_p50_s']:.1f} / {r['latency_p95_s']:.1f} s | "
            f"{r['first_text_p50_s'] or 0:.1f} / {r['first_text_p95_s'] or 0:.1f} s | {r['batches']} | "
            f"{r['peak_rss_mb']:,.0f} MB |\n")


def large_table(args, r: dict) -> str:
    return ("| large request | its latency | small requests | steps | tokens each | small latency alone p50 / p95 "
            "| beside the large one p50 / p95 | small ones done before it |\n"
            "|---|---:|---:|---:|---:|---|---|---:|\n"
            f"| {args.large_prompts} prompts × {args.max_tokens} tokens | {r['large_latency_s']:.1f} s | "
            f"{args.requests} | {args.steps} | {args.max_tokens} | "
            f"{r['small_alone_p50_s']:.2f} / {r['small_alone_p95_s']:.2f} s | "
            f"{r['small_beside_large_p50_s']:.2f} / {r['small_beside_large_p95_s']:.2f} s | "
            f"{r['small_done_before_large']} of {args.requests} |\n")


if __name__ == "__main__":
    raise SystemExit(main())
