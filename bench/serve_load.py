"""Load on `dlm serve`: N concurrent streaming completions, measured from the client side.

    python bench/serve_load.py --ckpt runs/mdlm --requests 64 --concurrency 32 --max-tokens 128 --steps 64

Starts the server in this process on a free loopback port (uvicorn in a thread, the same app as
`dlm serve`), fires `--requests` streaming requests through the official openai client,
`--concurrency` at a time, and reports: wall time, requests/s, generated tokens/s, latency (p50,
p95) and time to the first streamed text (p50, p95), the batches the engine ran, and this
process's peak resident memory (server and clients together). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from markers import write_between_markers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--prompt", default="ROMEO:")
    parser.add_argument("--json", default="bench/results/serve_load.json")
    parser.add_argument("--markdown", help="write the figures between the serve_load.py markers of this page")
    args = parser.parse_args()

    import openai
    import uvicorn

    import dlm
    from dlm.serve.app import create_app

    name = Path(args.ckpt).name
    app = create_app({name: dlm.load(args.ckpt)}, max_batch=args.max_batch, max_queue=4 * args.requests)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=600)

    def one(i: int) -> dict:
        started = time.perf_counter()
        first, text = None, ""
        for chunk in client.completions.create(model=name, prompt=args.prompt, max_tokens=args.max_tokens, seed=i,
                                               stream=True, extra_body={"steps": args.steps}):
            if chunk.choices[0].text and first is None:
                first = time.perf_counter() - started
            text += chunk.choices[0].text
        return {"latency": time.perf_counter() - started, "first": first, "chars": len(text)}

    one(-1)  # warm-up
    started = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        results = list(pool.map(one, range(args.requests)))
    wall = time.perf_counter() - started
    server.should_exit = True
    latency = np.array([r["latency"] for r in results])
    first = np.array([r["first"] for r in results if r["first"] is not None])
    engine = app.state.engine
    report = {"settings": vars(args), "machine": f"{platform.processor() or platform.machine()}",
              "date": time.strftime("%Y-%m-%d"), "completed": sum(r["chars"] == args.max_tokens for r in results),
              "wall_s": wall, "requests_per_s": args.requests / wall,
              "tokens_per_s": sum(r["chars"] for r in results) / wall,
              "latency_p50_s": float(np.percentile(latency, 50)), "latency_p95_s": float(np.percentile(latency, 95)),
              "first_text_p50_s": float(np.percentile(first, 50)) if len(first) else None,
              "first_text_p95_s": float(np.percentile(first, 95)) if len(first) else None,
              "batches": engine.batches_run - 1, "rows": engine.rows_run - 1,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    print(json.dumps(report, indent=2))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    if args.markdown:
        r = report
        text = (f"`python bench/serve_load.py {' '.join(sys.argv[1:])}` ({r['date']}, {r['machine']}, "
                f"{os.cpu_count()} CPU cores; server and clients in one process)\n\n"
                "| requests | concurrency | completed | steps | tokens each | wall | requests/s | tokens/s "
                "| latency p50 / p95 | first text p50 / p95 | engine batches | peak RSS |\n"
                "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|\n"
                f"| {args.requests} | {args.concurrency} | {r['completed']} | {args.steps} | {args.max_tokens} | "
                f"{r['wall_s']:.1f} s | {r['requests_per_s']:.2f} | {r['tokens_per_s']:,.0f} | "
                f"{r['latency_p50_s']:.1f} / {r['latency_p95_s']:.1f} s | "
                f"{r['first_text_p50_s'] or 0:.1f} / {r['first_text_p95_s'] or 0:.1f} s | {r['batches']} | "
                f"{r['peak_rss_mb']:,.0f} MB |\n")
        write_between_markers(args.markdown, "bench/serve_load.py", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
