"""MAUVE's defining properties on fixed features: ≈1 for one distribution, ≈0 for disjoint ones."""

from __future__ import annotations

import numpy as np
import pytest

from dlm.eval.mauve import mauve, mauve_with_interval


def gaussian_clusters(centres: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    which = rng.integers(len(centres), size=n)
    return centres[which] + 0.05 * rng.standard_normal((n, centres.shape[1]))


def test_same_distribution_scores_near_one():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((5, 16))
    p, q = gaussian_clusters(centres, 300, rng), gaussian_clusters(centres, 300, rng)
    assert mauve(p, q)["mauve"] > 0.9
    assert mauve(p, p)["mauve"] == pytest.approx(1.0, abs=1e-3)  # identical feature sets


def test_disjoint_distributions_score_near_zero():
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((10, 16))
    p, q = gaussian_clusters(centres[:5], 300, rng), gaussian_clusters(centres[5:], 300, rng)
    assert mauve(p, q)["mauve"] < 0.05


def test_partial_overlap_lies_between_and_is_seeded():
    rng = np.random.default_rng(2)
    centres = rng.standard_normal((6, 16))
    p, q = gaussian_clusters(centres[:4], 300, rng), gaussian_clusters(centres[2:], 300, rng)
    score = mauve(p, q, seed=3)["mauve"]
    assert 0.05 < score < 0.9
    assert mauve(p, q, seed=3)["mauve"] == score


@pytest.mark.parametrize("seed, p_range, q_range", [(0, (0, 4), (2, 6)), (1, (0, 6), (1, 6)), (2, (0, 3), (3, 6)),
                                                    (3, (0, 6), (0, 6))])
def test_agrees_with_the_reference_package(seed, p_range, q_range):
    # mauve-text (GPL) is a test-time oracle only: dlm never imports it.
    reference = pytest.importorskip("mauve", reason="mauve-text is not installed (optional test-time oracle)")
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((6, 32))

    def draw(lo: int, hi: int) -> np.ndarray:
        sub = centres[lo:hi]
        return sub[rng.integers(len(sub), size=400)] + 0.3 * rng.standard_normal((400, 32))

    p, q = draw(*p_range), draw(*q_range)
    expected = reference.compute_mauve(p_features=p, q_features=q, verbose=False, seed=seed).mauve
    assert mauve(p, q, seed=seed)["mauve"] == pytest.approx(expected, abs=0.03)


def test_bootstrap_interval_holds_the_point_estimate_and_is_seeded():
    rng = np.random.default_rng(4)
    centres = rng.standard_normal((6, 384))
    p, q = gaussian_clusters(centres[:4], 64, rng), gaussian_clusters(centres[2:], 64, rng)
    result = mauve_with_interval(p, q, seed=5, bootstrap=50)
    assert result["mauve"] == mauve(p, q, seed=5)["mauve"]  # the point estimate is plain MAUVE
    assert result | {"mauve": None, "interval_low": None, "interval_high": None} == {
        "mauve": None, "num_clusters": 6, "p_samples": 64, "q_samples": 64, "scale": 5.0, "seed": 5,
        "interval_low": None, "interval_high": None, "bootstrap": 50}
    assert 0 <= result["interval_low"] <= result["mauve"] <= result["interval_high"] <= 1
    assert result["interval_low"] < result["interval_high"]
    assert mauve_with_interval(p, q, seed=5, bootstrap=50) == result
    assert mauve_with_interval(p, q, seed=6, bootstrap=50) != result
    no_bootstrap = mauve_with_interval(p, q, seed=5, bootstrap=0)
    assert no_bootstrap["interval_low"] == no_bootstrap["interval_high"] == result["mauve"]


def test_bootstrap_interval_narrows_with_more_samples():
    rng = np.random.default_rng(2)
    centres = rng.standard_normal((6, 16))

    def width(n: int) -> float:
        p, q = gaussian_clusters(centres[:4], n, rng), gaussian_clusters(centres[2:], n, rng)
        result = mauve_with_interval(p, q, num_clusters=6, bootstrap=30)
        return result["interval_high"] - result["interval_low"]

    assert width(400) < width(40) / 2  # observed: 0.027 against 0.110


def test_bootstrap_interval_separates_same_from_disjoint():
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((10, 32))
    p, same = gaussian_clusters(centres[:5], 64, rng), gaussian_clusters(centres[:5], 64, rng)
    disjoint = gaussian_clusters(centres[5:], 64, rng)
    close, apart = mauve_with_interval(p, same), mauve_with_interval(p, disjoint)
    assert apart["interval_high"] < 0.3 and close["interval_low"] > 0.6  # observed: 0.16 and 0.82
