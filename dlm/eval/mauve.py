"""MAUVE (Pillutla et al., 2021): how close the distribution of model text is to human text.

Given feature vectors of samples (P) and of held-out text (Q), both sets are quantized together
into k clusters (k-means on the PCA-whitened union), giving histograms p and q. For mixtures
r_λ = λp + (1 − λ)q the divergence curve is (exp(−c·KL(q‖r_λ)), exp(−c·KL(p‖r_λ))), λ ∈ (0, 1);
MAUVE is the area under it (1: the same distribution; near 0: disjoint). Defaults follow the
reference implementation: k = N/10 clusters, c = 5, 25 mixture weights, PCA keeping 90 % of the
variance, 5 k-means restarts.

Written from the paper's description in numpy; the reference package (GPL) is not a dependency.
"""

from __future__ import annotations

import numpy as np


def _pca(features: np.ndarray, explained: float) -> np.ndarray:
    centred = features - features.mean(0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    variance = singular**2 / max((singular**2).sum(), 1e-12)
    keep = int(np.searchsorted(np.cumsum(variance), explained) + 1)
    return centred @ vt[:keep].T


def _kmeans(points: np.ndarray, k: int, rng: np.random.Generator, iters: int = 100) -> tuple[np.ndarray, float]:
    # k-means++ seeding, then Lloyd's iterations. Returns (labels, inertia).
    centres = [points[rng.integers(len(points))]]
    for _ in range(1, k):
        d2 = np.min(((points[:, None] - np.array(centres)[None]) ** 2).sum(-1), axis=1)
        total = d2.sum()
        pick = rng.choice(len(points), p=d2 / total) if total > 0 else rng.integers(len(points))
        centres.append(points[pick])
    centres = np.array(centres)
    labels = np.zeros(len(points), dtype=int)
    for i in range(iters):
        d2 = ((points[:, None] - centres[None]) ** 2).sum(-1)
        new_labels = d2.argmin(1)
        if i and np.array_equal(new_labels, labels):
            break
        labels = new_labels
        for c in range(k):
            members = points[labels == c]
            if len(members):
                centres[c] = members.mean(0)
    inertia = float(((points - centres[labels]) ** 2).sum())
    return labels, inertia


def _kl(a: np.ndarray, b: np.ndarray) -> float:
    mask = a > 0
    return float((a[mask] * np.log(a[mask] / b[mask])).sum())


def mauve(p_features: np.ndarray, q_features: np.ndarray, num_clusters: int | None = None, scale: float = 5.0,
          mixtures: int = 25, explained_variance: float = 0.9, restarts: int = 5, seed: int = 0) -> dict:
    """MAUVE between model features p (N, d) and reference features q (M, d)."""
    p_features, q_features = np.asarray(p_features, np.float64), np.asarray(q_features, np.float64)
    union = np.concatenate([p_features, q_features])
    k = num_clusters or max(2, round(min(len(p_features), len(q_features)) / 10))
    reduced = _pca(union / np.maximum(np.linalg.norm(union, axis=1, keepdims=True), 1e-12), explained_variance)
    rng = np.random.default_rng(seed)
    labels = min((_kmeans(reduced, k, rng) for _ in range(restarts)), key=lambda result: result[1])[0]
    p_hist = np.bincount(labels[: len(p_features)], minlength=k) / len(p_features)
    q_hist = np.bincount(labels[len(p_features):], minlength=k) / len(q_features)
    weights = np.linspace(1e-6, 1 - 1e-6, mixtures)
    xs, ys = [1.0], [0.0]  # the curve's end points (λ → 0 and λ → 1)
    for lam in weights:
        mix = lam * p_hist + (1 - lam) * q_hist
        xs.append(np.exp(-scale * _kl(q_hist, mix)))
        ys.append(np.exp(-scale * _kl(p_hist, mix)))
    xs.append(0.0)
    ys.append(1.0)
    order = np.argsort(xs)
    x, y = np.array(xs)[order], np.array(ys)[order]
    area = float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))
    return {"mauve": area, "num_clusters": k, "p_samples": len(p_features), "q_samples": len(q_features),
            "scale": scale, "seed": seed}
