"""bench/small_linear.py times every layout it offers only after checking it computes what F.linear does."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch


def test_every_layout_agrees_with_f_linear_and_is_timed(bench, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small = bench("small_linear")
    x, weight = torch.randn(3, 8), torch.randn(5, 8)
    for fn in small.layouts(x, weight).values():
        assert torch.allclose(fn(), torch.nn.functional.linear(x, weight), atol=1e-5)
    out = tmp_path / "small.json"
    monkeypatch.setattr(sys, "argv", ["small_linear.py", "--d-model", "16", "--rows", "1", "4", "--calls", "4",
                                      "--json", str(out)])
    assert small.main() == 0
    report = json.loads(out.read_text())
    assert len(report["results"]) == 4 * 2  # four layer shapes, two row counts
    assert all(us > 0 for row in report["results"] for us in row["us"].values())
    assert {row["layer"] for row in report["results"]} == {"qkv", "attention out", "MLP up", "MLP down"}
