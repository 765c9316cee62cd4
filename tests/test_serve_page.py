"""The web page at / in headless Chromium: a prompt typed, frames arriving, the final text shown,
the AR twin racing beside it; a screenshot saved (to $DLM_SCREENSHOT_DIR when set, for the docs)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="dlm serve needs the optional fastapi package (pip install 'dlm[serve]')")
sync_api = pytest.importorskip("playwright.sync_api", reason="the page test drives Chromium with playwright "
                               "(pip install playwright)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (apt-get install chromium); "
                                ".ci/run installs it")

from test_serve import Server, runs  # noqa: E402, F401  (the module-scoped tiny runs)

import dlm  # noqa: E402
from dlm.serve.app import create_app  # noqa: E402

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-quic"]


def test_the_page_shows_text_developing(runs, tmp_path: Path) -> None:  # noqa: F811
    server = Server(create_app({"mdlm": dlm.load(runs["mdlm"]), "ar": dlm.load(runs["ar"])}))
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page(viewport={"width": 1200, "height": 640})
            page.goto(server.url + "/")
            page.wait_for_selector("#model option", state="attached")
            assert page.is_visible("#ar-panel")  # an AR twin is loaded: the race panel shows
            page.fill("#prompt", "The ")
            page.fill("#length", "32")
            page.fill("#steps", "16")
            frames_seen = []
            page.on("console", lambda message: frames_seen.append(message.text))
            page.click("#go")
            page.wait_for_selector('#d-status[data-done="1"]', timeout=120_000)
            page.wait_for_selector('#a-status[data-done="1"]', timeout=120_000)
            status = page.inner_text("#d-status")
            assert status.startswith("done: 16 frames, 32 characters")
            text = page.get_attribute("#d-canvas", "data-text")
            assert text.startswith("The ") and len(text) == 4 + 32 and "░" not in page.inner_text("#d-canvas")
            assert page.inner_text("#a-status").startswith("done: 32 frames, 32 characters")
            # While it ran, frames with masks were drawn (a fast run may never paint one, so the page
            # counts them); at the end, none are left.
            assert int(page.get_attribute("#d-canvas", "data-masked-frames")) >= 15
            shot = tmp_path / "serve-page.png"
            page.screenshot(path=str(shot))
            assert shot.stat().st_size > 10_000
            if os.environ.get("DLM_SCREENSHOT_DIR"):
                shutil.copy(shot, Path(os.environ["DLM_SCREENSHOT_DIR"]) / shot.name)
            browser.close()
    finally:
        server.stop()


def ort_web_dist() -> Path | None:
    """onnxruntime-web's dist folder: $ORT_WEB_DIST, or where .ci/run installs it."""
    candidates = [os.environ.get("ORT_WEB_DIST"),
                  Path(__file__).resolve().parents[1] / ".ci-cache/node_modules/onnxruntime-web/dist"]
    return next((Path(c) for c in candidates if c and (Path(c) / "ort.wasm.min.js").is_file()), None)


NEEDS_ORT_WEB = pytest.mark.skipif(ort_web_dist() is None, reason="onnxruntime-web is not installed (npm install "
                                   "onnxruntime-web into .ci-cache, as .ci/run does, or set ORT_WEB_DIST)")


def sample_on_the_onnx_page(folder: Path, prompt: str, length: int, steps: int, shot: Path) -> dict[str, str]:
    """Serve an exported folder as static files (no model on the server), sample once in Chromium, and
    return the page's text, ids and status."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    static = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=static.serve_forever, daemon=True).start()
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page(viewport={"width": 1000, "height": 520})
            page.goto(f"http://127.0.0.1:{static.server_port}/")
            page.wait_for_selector("#go:not([disabled])", timeout=60_000)
            page.fill("#prompt", prompt)
            page.fill("#length", str(length))
            page.fill("#steps", str(steps))
            page.click("#go")
            page.wait_for_function("() => { const s = document.getElementById('status');"
                                   "  return s.dataset.done === '1' || s.classList.contains('error'); }",
                                   timeout=60_000)
            assert page.get_attribute("#status", "data-done") == "1", page.inner_text("#status")
            seen = {"text": page.get_attribute("#canvas", "data-text"),
                    "ids": page.get_attribute("#canvas", "data-ids"),
                    "status": page.inner_text("#status"), "length_label": page.inner_text("#length-label")}
            page.screenshot(path=str(shot))
            if os.environ.get("DLM_SCREENSHOT_DIR"):
                shutil.copy(shot, Path(os.environ["DLM_SCREENSHOT_DIR"]) / shot.name)
            browser.close()
    finally:
        static.shutdown()
    return seen


@NEEDS_ORT_WEB
def test_the_onnx_page_samples_in_the_browser(runs, tmp_path: Path) -> None:  # noqa: F811
    from dlm.onnx_export import export_onnx

    export_onnx(runs["mdlm"], tmp_path / "web", web=True, ort_dir=ort_web_dist())
    seen = sample_on_the_onnx_page(tmp_path / "web", "The ", 24, 12, tmp_path / "onnx-page.png")
    assert seen["text"].startswith("The ") and len(seen["text"]) == 4 + 24
    assert "in this browser" in seen["status"] and seen["length_label"] == "Length (characters)"


@NEEDS_ORT_WEB
def test_the_onnx_page_encodes_and_spells_bpe_tokens(corpus_file: Path, tmp_path: Path, monkeypatch) -> None:
    """A block-diffusion run with BPE tokens: the page's JavaScript tokenizer gives the prompt dlm's ids,
    decodes block by block, and spells the ids it wrote as dlm would."""
    from dlm.cli import main
    from dlm.onnx_export import export_onnx

    monkeypatch.setenv("DLM_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "bpe-bd3"
    assert main(["train", "--preset", "tiny", "--data", str(corpus_file), "--out", str(run), "--max-steps", "20",
                 "--quiet", "--objective", "bd3", "--block-size", "4", "model.block_size=32",
                 "data.tokenizer=bpe", "data.vocab_size=320"]) == 0
    export_onnx(run, tmp_path / "web", web=True, ort_dir=ort_web_dist())
    assert (tmp_path / "web" / "bpe.js").is_file()
    prompt, length = "The king's men, ", 12
    seen = sample_on_the_onnx_page(tmp_path / "web", prompt, length, 6, tmp_path / "onnx-page-bpe.png")
    tokenizer = dlm.load(run).tokenizer
    prompt_ids = tokenizer.encode(prompt)
    ids = json.loads(seen["ids"])
    assert ids[:len(prompt_ids)] == prompt_ids and len(ids) == len(prompt_ids) + length
    blocked = {tokenizer.mask_id, tokenizer.pad_id, tokenizer.bos_id}
    assert seen["text"] == prompt + tokenizer.decode([i for i in ids[len(prompt_ids):] if i not in blocked])
    assert f"done: {length} tokens (" in seen["status"] and seen["length_label"] == "Length (tokens)"
