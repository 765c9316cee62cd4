"""Where text comes from: the default corpus (downloaded once and cached), a file, a folder or a glob.

The default corpus is Tiny Shakespeare. It is fetched on first use from its usual public address,
checked against its sha256 and cached in the dlm cache folder. `DLM_TINYSHAKESPEARE=/path/input.txt`
(or `--data /path/input.txt`) points at a local copy instead, which is what offline machines do.
"""

from __future__ import annotations

import glob
import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from dlm.errors import DlmError
from dlm.io import atomic_write_bytes, sha256_file

TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TEXT_SUFFIXES = (".txt", ".md", ".text", ".rst")


def cache_dir() -> Path:
    """$DLM_CACHE, else $XDG_CACHE_HOME/dlm, else ~/.cache/dlm."""
    if os.environ.get("DLM_CACHE"):
        return Path(os.environ["DLM_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dlm"


def tinyshakespeare_path() -> Path:
    """A verified local copy of Tiny Shakespeare: $DLM_TINYSHAKESPEARE, the cache, or a download."""
    cached = cache_dir() / "corpora" / "tinyshakespeare.txt"
    local = os.environ.get("DLM_TINYSHAKESPEARE")
    if local:
        path = Path(local)
        if not path.is_file():
            raise DlmError(f"DLM_TINYSHAKESPEARE={local} is not a file; point it at Tiny Shakespeare's input.txt")
        if not cached.is_file() and sha256_file(path) == TINYSHAKESPEARE_SHA256:
            # Keep a verified copy, so later commands work offline without the variable.
            atomic_write_bytes(cached, path.read_bytes())
        return path
    if cached.is_file() and sha256_file(cached) == TINYSHAKESPEARE_SHA256:
        return cached
    try:
        with urllib.request.urlopen(TINYSHAKESPEARE_URL, timeout=30) as response:
            data = response.read()
    except (urllib.error.URLError, OSError) as e:
        raise DlmError(f"could not download Tiny Shakespeare ({e}); offline, pass a local copy with "
                       "--data PATH/input.txt or set DLM_TINYSHAKESPEARE=PATH/input.txt") from None
    if hashlib.sha256(data).hexdigest() != TINYSHAKESPEARE_SHA256:
        raise DlmError(f"the file at {TINYSHAKESPEARE_URL} failed its sha256 check; pass a local copy with --data")
    atomic_write_bytes(cached, data)
    return cached


def resolve_files(spec: str) -> list[Path]:
    """The text files named by `spec` ('tinyshakespeare', a file, a folder or a glob), sorted."""
    if spec == "tinyshakespeare":
        return [tinyshakespeare_path()]
    path = Path(spec).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise DlmError(f"folder {spec} holds no text files ({', '.join(TEXT_SUFFIXES)}); add some or pass a file")
        return files
    if any(ch in spec for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True) if Path(p).is_file())
        if not files:
            raise DlmError(f"the pattern {spec!r} matches no files; check the path")
        return files
    raise DlmError(f"data file {spec} not found; pass an existing file, folder or glob with --data")


def read_documents(files: list[Path]) -> list[str]:
    docs = []
    for path in files:
        try:
            docs.append(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise DlmError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); convert it to UTF-8") from None
    if not any(doc.strip() for doc in docs):
        raise DlmError(f"the corpus ({files[0]}{' …' if len(files) > 1 else ''}) is empty; give text to train on")
    return docs
