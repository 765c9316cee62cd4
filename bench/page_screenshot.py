"""A screenshot of the page `dlm serve` shows, after a prompt has been written by both twins.

    python bench/page_screenshot.py --diffusion runs/mdlm --ar runs/ar --out docs/images/serve-page.png

Serves the two runs (the same app as `dlm serve`, on a free loopback port), opens the page in
headless Chromium (Debian's, driven by Playwright), types the prompt, presses Generate, waits for
both panels to finish and saves the screenshot; also one mid-way through (`-mid.png`).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import threading
import time
from pathlib import Path

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-quic"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--diffusion", required=True)
    parser.add_argument("--ar", required=True)
    parser.add_argument("--prompt", default="ROMEO:\n")
    parser.add_argument("--length", type=int, default=160)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--out", default="docs/images/serve-page.png")
    args = parser.parse_args()

    import uvicorn
    from playwright.sync_api import sync_playwright

    import dlm
    from dlm.serve.app import create_app

    pipes = {Path(args.diffusion).name: dlm.load(args.diffusion), Path(args.ar).name: dlm.load(args.ar)}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(pipes), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=FLAGS)
        page = browser.new_page(viewport={"width": 1200, "height": 620})
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_selector("#model option", state="attached")
        page.fill("#prompt", args.prompt)
        page.fill("#length", str(args.length))
        page.fill("#steps", str(args.steps))
        page.click("#go")
        page.wait_for_function("document.querySelector('#d-info').textContent.includes('step "
                               f"{args.steps // 2}')", timeout=120_000)
        page.screenshot(path=str(out.with_name(out.stem + "-mid.png")))
        page.wait_for_selector('#d-status[data-done="1"]', timeout=300_000)
        page.wait_for_selector('#a-status[data-done="1"]', timeout=300_000)
        page.screenshot(path=str(out))
        print(page.inner_text("#d-status"), "|", page.inner_text("#a-status"))
        browser.close()
    server.should_exit = True
    print(f"written {out} and {out.with_name(out.stem + '-mid.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
