"""Benches write their tables into docs between two HTML comments, so a page keeps its prose and
its figures stay regenerable: `<!-- bench/NAME.py: begin -->` ... `<!-- bench/NAME.py: end -->`."""

from __future__ import annotations

from pathlib import Path

from dlm.io import atomic_write_text


def write_between_markers(page: str | Path, name: str, text: str) -> None:
    """Replace what lies between bench `name`'s markers in `page` (appending them when absent)."""
    page = Path(page)
    begin, end = f"<!-- {name}: begin -->", f"<!-- {name}: end -->"
    current = page.read_text(encoding="utf-8") if page.is_file() else ""
    if begin not in current or end not in current:
        current = f"{current.rstrip()}\n\n{begin}\n{end}\n".lstrip()
    head, rest = current.split(begin, 1)
    body = text if text.endswith("\n") else text + "\n"
    atomic_write_text(page, f"{head}{begin}\n{body}{end}{rest.split(end, 1)[1]}")
