"""What a training run's first passes cost with an empty compile cache, as on a user's first run.

A fresh model is compiled and its training passes (forward and backward of the README's block-diffusion recipe, 3 ×
192, 16 windows of 256 tokens, no optimizer) are timed one by one: the first holds the compile, a later one that is
as slow holds a second compile, the median of the rest is the steady pass. `regional` compiles each transformer
block instead of the whole model (the blocks share one compiled graph: a shorter compile, maybe a slower pass);
`eager` does not compile. Each variant runs in its own process with its own empty cache folder and its own empty
temporary folder (inductor keeps its precompiled C++ headers there, outside the cache folder: a user's first run
builds them too).

    python bench/cold_start.py --vocab 2048 --dtype fp32 --variants whole regional eager

Prints seconds and writes JSON (default bench/results/cold_start.json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from machine import run_header, save_report  # noqa: E402 (bench/ is on the path when run)


def one_variant(variant: str, vocab: int, dtype: str, passes: int) -> dict:
    """Run in a child process (an empty TORCHINDUCTOR_CACHE_DIR set by the parent): seconds of each pass."""
    import time

    import torch
    from timing import recipe_model, recipe_pass

    from dlm.runtime import pin_cpu_vector_width

    model = recipe_model(vocab, "bd3")
    pin_cpu_vector_width()
    if variant == "regional":
        for block in model.blocks:
            block.compile()
        net = model
    elif variant == "eager":
        net = model
    else:
        net = torch.compile(model)
    x = torch.randint(0, vocab - 8, (16, 256))
    noise, precision = torch.Generator(), torch.bfloat16 if dtype == "bf16" else torch.float32
    seconds = []
    for _ in range(passes):
        started = time.perf_counter()
        recipe_pass(net, model, x, "bd3", precision, noise)
        seconds.append(time.perf_counter() - started)
    rest = sorted(seconds[3:])
    return {"variant": variant, "vocab": vocab, "seconds": seconds, "steady_s": rest[len(rest) // 2]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=2048, help="70: characters; 2048: the BPE recipe")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--variants", nargs="+", choices=("whole", "regional", "eager"), default=["whole"])
    parser.add_argument("--passes", type=int, default=12, help="passes timed (at least 5)")
    parser.add_argument("--json", default="bench/results/cold_start.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_variant(args.child, args.vocab, args.dtype, max(args.passes, 5))))
        return 0
    report = {**run_header("cold_start.py"), "unit": "seconds a training pass (forward + backward)",
              "dtype": args.dtype, "results": []}
    print(f"{'variant':>8s} {'vocab':>5s}  {'1st pass':>8s}  {'2nd pass':>8s}  {'steady':>7s}")
    for variant in args.variants:
        with tempfile.TemporaryDirectory() as cache:
            out = subprocess.run([sys.executable, __file__, "--child", variant, "--vocab", str(args.vocab),
                                  "--dtype", args.dtype, "--passes", str(args.passes)],
                                 env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": os.path.join(cache, "inductor"),
                                      "TMPDIR": cache}, capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"cold_start: the {variant} run failed:\n{out.stderr[-2000:]}")
        row = json.loads(out.stdout.strip().splitlines()[-1])
        report["results"].append(row)
        first, second = row["seconds"][:2]
        print(f"{variant:>8s} {args.vocab:5d}  {first:8.1f}  {second:8.2f}  {row['steady_s']:7.3f}", flush=True)
    save_report(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
