"""`dlm serve`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dlm.errors import DlmError
from dlm.serve.limits import add_limit_flags, limits_from_args

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError:
        raise DlmError("dlm serve needs FastAPI and uvicorn, which are not installed; "
                       "pip install 'dlm[serve]'") from None
    from dlm.inference import load
    from dlm.serve.app import create_app

    pipes = {}
    for path in [args.ckpt, *(args.ar or [])]:
        pipe = load(path, device=args.device, dtype=args.dtype)
        name = Path(path).name if Path(path).name != "best" else f"{Path(path).parent.name}-best"  # RUN/best
        pipes[name if name not in pipes else str(path)] = pipe
    api_key = args.api_key or os.environ.get("DLM_API_KEY") or None
    if args.host not in LOOPBACK and not api_key:
        print(f"dlm: warning: serving on {args.host} without an API key: anyone who can reach this machine can "
              "use it (--api-key KEY or DLM_API_KEY protects it)", file=sys.stderr)
    limits = limits_from_args(args)
    app = create_app(pipes, api_key=api_key, limits=limits, max_batch=args.max_batch, max_queue=args.max_queue)
    print(f"dlm: serving {', '.join(pipes)} on http://{args.host}:{args.port}/ (OpenAI API under /v1"
          f"{', API key required' if api_key else ''}); Ctrl-C stops", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def register(sub) -> None:
    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP server and a live web page over trained runs",
                       description="Serve runs over HTTP: GET /v1/models, POST /v1/completions and "
                       "/v1/chat/completions (streaming with stream: true), and at / a page that shows the "
                       "text denoising. Diffusion settings travel as extra body fields (steps, sampler, "
                       "block_length, ...). Needs pip install 'dlm[serve]'.")
    p.add_argument("--ckpt", required=True, help="the run to serve (diffusion or AR; chat fine-tuned runs also "
                   "answer /v1/chat/completions)")
    p.add_argument("--ar", action="append", metavar="RUN", help="also serve this run (e.g. the AR twin, which the "
                   "page then races beside the diffusion model); repeat for more")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1 (default: $DLM_API_KEY, else none)")
    p.add_argument("--max-batch", type=int, default=16, help="rows decoded together at most; a request with "
                   "more rows (prompts × n) runs as several batches, taking turns with other requests "
                   "(default: %(default)s)")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting at most; more get HTTP 429 "
                   "(default: %(default)s)")
    add_limit_flags(p)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp32"),
                   help="network precision; auto: bf16 on CUDA, fp32 on a CPU")
    p.set_defaults(func=cmd_serve)
