"""A picture of `dlm race`: the two twins writing side by side, as a GIF and a frame sequence.

    python bench/race_frames.py --diffusion runs/mdlm --ar runs/ar --prompt "ROMEO:" --length 160 \\
        --steps 64 --gif docs/images/race.gif --markdown docs/serve.md

Runs the same race as `dlm race` (one step of each model in turn, wall time of each model's own
steps), keeps every frame, draws the frames as images (Pillow) into a GIF, and writes a few of them
as text for the docs.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import textwrap
import time
from pathlib import Path

import torch
from machine import describe_cpu  # noqa: E402 (bench/ is on the path when run)
from markers import write_between_markers
from PIL import Image, ImageDraw, ImageFont

import dlm
from dlm.viz.terminal import race


def font(size: int):
    for name in ("DejaVuSansMono.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default()


def draw(frame: list, width: int = 48) -> Image.Image:
    face = font(14)
    columns = []
    for name, step, seconds, text in frame:
        lines = [f"{name}", f"step {step:3d} · {seconds:5.2f} s", ""]
        for paragraph in text.split("\n"):
            lines += textwrap.wrap(paragraph, width, drop_whitespace=False) or [""]
        columns.append(lines)
    height = max(len(c) for c in columns)
    image = Image.new("RGB", (30 + len(columns) * (width * 9 + 30), 30 + height * 18), "#101418")
    pen = ImageDraw.Draw(image)
    for k, lines in enumerate(columns):
        x = 15 + k * (width * 9 + 30)
        for row, line in enumerate(lines):
            colour = "#ffd54a" if row < 2 else "#e6e6e6"
            pen.text((x, 15 + row * 18), line.replace("░", "·"), fill=colour, font=face)
    return image


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--diffusion", required=True)
    parser.add_argument("--ar", required=True)
    parser.add_argument("--prompt", default="ROMEO:")
    parser.add_argument("--length", type=int, default=160)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gif", default="bench/results/race.gif")
    parser.add_argument("--snapshots", type=int, default=4, help="frames written out as text")
    parser.add_argument("--markdown", help="write the GIF link and the text frames between the race_frames.py markers")
    args = parser.parse_args()
    diffusion, ar = dlm.load(args.diffusion), dlm.load(args.ar)
    frames: list = []
    runners = race(diffusion, ar, args.prompt, args.length, {"steps": args.steps}, seed=args.seed,
                   out=io.StringIO(), frames=frames)
    images = [draw(f) for f in frames[:: max(1, len(frames) // 60)]] + [draw(frames[-1])] * 10  # hold the end
    Path(args.gif).parent.mkdir(parents=True, exist_ok=True)
    images[0].save(args.gif, save_all=True, append_images=images[1:], duration=80, loop=0)
    print(f"{len(frames)} frames; GIF of {len(images)} written to {args.gif}")
    lines = []
    picks = sorted({round(i * (len(frames) - 1) / (args.snapshots - 1)) for i in range(args.snapshots)})
    for i in picks:
        lines.append(f"--- frame {i + 1} of {len(frames)} ---")
        for name, step, seconds, text in frames[i]:
            lines.append(f"[{name} · step {step} · {seconds:.2f} s]\n{text}\n")
    totals = [f"{r.name}: {r.tokens} tokens, {r.step} steps, {r.passes} forward passes, {r.seconds:.2f} s"
              for r in runners]
    print("\n".join(lines + totals))
    if args.markdown:
        gif = os.path.relpath(Path(args.gif).resolve(), Path(args.markdown).resolve().parent)
        command = "python bench/race_frames.py " + " ".join(sys.argv[1:])
        text = (f"![dlm race: the diffusion model and its AR twin writing side by side]({gif})\n\n"
                f"`{command}` ({time.strftime('%Y-%m-%d')}, {describe_cpu()}, "
                f"torch {torch.__version__}). Frames as text:\n\n```text\n" + "\n".join(lines) + "```\n\n"
                + "".join(f"* {t}\n" for t in totals))
        write_between_markers(args.markdown, "bench/race_frames.py", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
