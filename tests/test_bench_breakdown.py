"""bench/decode_breakdown.py counts what ran: the AR twin makes one pass of one row per character;
bench/drafts_by_batch.py times every number of drafts against the twin and refuses drafts that change the text."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch


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


class FakePipe:
    """A sampler that writes `length` characters a row, the same text for any number of drafts (unless told
    otherwise), and advances a fake clock by a set time per batch."""

    def __init__(self, clock: list[float], seconds: dict, text_follows_drafts: bool = False):
        self.clock, self.seconds, self.text_follows_drafts = clock, seconds, text_follows_drafts
        self.diffusion_block, self.device = 4, torch.device("cpu")
        self.tokenizer = SimpleNamespace(reserved_ids=[], decode=lambda ids: "c" * len(ids))  # a character a token
        self.model = SimpleNamespace(cfg=SimpleNamespace(vocab_size=69))

    def sample(self, prompts: list[str], length: int, seed: int, drafts: int | None = None, **options):
        self.clock[0] += self.seconds[drafts]
        tokens = torch.full((len(prompts), length), seed + (drafts or 0) * self.text_follows_drafts)
        return SimpleNamespace(tokens=tokens, generated=torch.ones(len(prompts), length, dtype=torch.bool))


def test_drafts_by_batch_times_each_number_of_drafts_against_the_twin(bench) -> None:
    by_batch = bench("drafts_by_batch")
    clock = [0.0]
    twin = FakePipe(clock, {None: 1.0})
    block = FakePipe(clock, {0: 0.5, 1: 0.8, 2: 2.0})
    row = by_batch.time_batch(twin, block, batch=8, drafts=[0, 1, 2], turns=3, length=16, options={},
                              clock=lambda: clock[0])
    assert row["twin_chars_per_s"] == 8 * 16 / 1.0
    assert row["speed_vs_ar"] == pytest.approx({"0": 2.0, "1": 1.25, "2": 0.5})
    assert row["fastest_drafts"] == 0 and row["default_drafts"] == 0  # a batch of 8 on a CPU drafts nothing
    assert by_batch.time_batch(twin, block, 1, [0, 1, 2], 1, 16, {}, clock=lambda: clock[0])["default_drafts"] == 2
    lying = FakePipe(clock, {0: 0.5, 1: 0.8}, text_follows_drafts=True)
    with pytest.raises(SystemExit, match="the drafts changed the text"):
        by_batch.time_batch(twin, lying, 2, [0, 1], 1, 16, {}, clock=lambda: clock[0])
