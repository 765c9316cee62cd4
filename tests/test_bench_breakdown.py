"""bench/decode_breakdown.py counts what ran: the AR twin makes one pass of one row per character."""

from __future__ import annotations


def test_the_breakdown_counts_passes_rows_and_time(bench, tiny_twins) -> None:
    breakdown = bench("decode_breakdown")
    assert breakdown.parse_item("runs/x") == ("runs/x", {}, "runs/x")
    assert breakdown.parse_item("fast=runs/x") == ("fast", {}, "runs/x")
    assert breakdown.parse_item('t={"threshold": 0.9}=runs/x') == ("t", {"threshold": 0.9}, "runs/x")
    row = breakdown.breakdown(str(tiny_twins["ar"]), {}, "fp32", samples=2, length=12)
    assert row["passes"] == 2 * 12 and row["chars_per_pass"] == 1.0 and row["rows_per_pass"] == 1.0
    assert row["network_ms_per_pass"] > 0 and row["rest_ms_per_pass"] > 0 and row["chars_per_s"] > 0
    # The diffusion run's passes read the whole canvas: every generated position is a row.
    row = breakdown.breakdown(str(tiny_twins["mdlm"]), {"steps": 4}, "fp32", samples=1, length=12)
    assert row["passes"] == 4 and row["rows_per_pass"] == 12
