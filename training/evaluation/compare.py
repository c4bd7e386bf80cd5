"""Paired comparison of two models on the same users: the mean per-user difference and its
bootstrap 95 % interval (users resampled with replacement, both models' values together, so
what the users have in common cancels out).

>>> import numpy as np
>>> old = np.array([0.5, 0.2, 0.0, 1.0] * 50)
>>> paired_bootstrap(old, old + 0.01, resamples=200)["ci95"][0] > 0
True
>>> paired_bootstrap(old, old, resamples=200)["difference"]
0.0
"""

from __future__ import annotations

import numpy as np


def paired_bootstrap(old: np.ndarray, new: np.ndarray, resamples: int = 1000, seed: int = 0) -> dict:
    """``{"difference": mean(new - old), "ci95": [low, high], "users": n, "resamples": r}``."""
    old, new = np.asarray(old, dtype=np.float64), np.asarray(new, dtype=np.float64)
    if old.shape != new.shape or old.ndim != 1:
        raise ValueError(f"paired values need the same users in the same order: shapes {old.shape} and {new.shape}")
    if not len(old):
        raise ValueError("paired comparison of no users")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    diff = new - old
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for i in range(0, resamples, 100):  # 100 resamples at a time: memory n x 100
        idx = rng.integers(0, len(diff), size=(min(100, resamples - i), len(diff)))
        means[i:i + len(idx)] = diff[idx].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"difference": float(diff.mean()), "ci95": [float(low), float(high)], "users": int(len(diff)),
            "resamples": int(resamples)}
