"""A ranking model as a target policy on the serving log: "what would this model have earned".

The serving policy fills slot after slot: with probability ``1 - epsilon`` the best remaining
candidate, otherwise one drawn uniformly from the remaining candidates (:mod:`training.models.bandit`).
The **target** is that same exploration over *another model's* ranking of the request's candidates
(a new ranker directory, say): its probability of the logged slate is

    pi_e(slate) = prod_s [ (1 - epsilon) [a_s = best remaining of its ranking] + epsilon / remaining ]

(zero when a logged item is not among its candidates), and the slate IPS/SNIPS estimate of its
value weights each request by ``pi_e(slate) / pi_b(slate)`` with ``pi_b`` the product of the logged
propensities -- unbiased with no assumption on how shoppers react to a slate, given common support:
the logger must be able to show what the target shows (it explores over its own candidates, so
items only the target retrieves are never logged: the estimate then says nothing about them, and
the effective sample size shows how little overlaps). Plain numpy; the model is any
``rank(requests) -> ranked external item ids`` function (:func:`model_ranker` loads a Raycart
model directory, no Ray).

Simplification, stated: the target ranks with the shopper's history *from the dataset* (what the
model was trained on), not the real-time history the serving app also used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from training.evaluation.ope.estimators import (
    OPEError,
    ci95,
    effective_sample_size,
    ratio_samples,
)
from training.evaluation.ope.serving_log import rewards_per_impression

if TYPE_CHECKING:
    from training.data.dataset import Dataset

Ranker = Callable[[list[str | None]], list[list[str]]]  # user ids (None: anonymous) -> ranked item ids


def slate_log_prob(ranking: list[str], slate: list[str], epsilon: float) -> float:
    """log pi_e(slate) under epsilon-greedy over ``ranking`` (-inf when it cannot show the slate)."""
    remaining = list(ranking)
    total = 0.0
    for item in slate:
        if item not in remaining:
            return float("-inf")
        p = epsilon / len(remaining) + (1 - epsilon) * (item == remaining[0])
        if p <= 0:
            return float("-inf")
        total += np.log(p)
        remaining.remove(item)
    return total


def model_ranker(model_dir: str, data: str | Dataset, candidates: int | None = None) -> Ranker:
    """Rank with the Raycart model in ``model_dir`` for the users of ``data`` (a dataset or its
    directory; their stored histories; unknown users get the cold-start answer)."""
    from training.data.dataset import load_dataset
    from training.data.interactions import Interactions
    from training.inference.modeldir import load_model

    pipeline = load_model(model_dir)
    ds = load_dataset(data) if isinstance(data, str) else data
    hist = ds.interactions(dedupe=True)
    users = {u: i for i, u in enumerate(ds.users["external_id"].to_pylist())}
    ids = ds.items["external_id"].to_pylist()
    n = candidates or getattr(pipeline, "k", 200)

    def rank(user_ids: list[str | None]) -> list[list[str]]:
        rows = [hist.row(users[u]).tolist() if u in users else [] for u in user_ids]
        out = []
        for lo in range(0, len(rows), 256):
            batch = Interactions.from_lists(rows[lo:lo + 256], hist.num_items)
            known = np.array([users.get(u, -1) for u in user_ids[lo:lo + 256]])
            recs = pipeline.recommend(batch, n=n, users=known if (known >= 0).all() else None)
            out.extend([[ids[r["item"]] for r in rec] for rec in recs])
        return out

    return rank


@dataclass(frozen=True)
class LoggedSlates:
    """The serving log grouped by request (request-id order): who asked, the slate in slot order,
    ``log pi_b(slate)`` (the sum of the logged log-propensities) and the request's reward."""

    users: list[str | None]
    slates: list[list[str]]
    log_b: np.ndarray
    value: np.ndarray

    @classmethod
    def of(cls, impressions: pa.Table, events: pa.Table) -> LoggedSlates:
        if impressions.num_rows == 0:
            raise OPEError("the feedback log holds no impressions")
        reward = rewards_per_impression(impressions, events)
        rid = np.asarray(impressions["request_id"].to_pylist(), dtype=object).astype(str)
        order = np.lexsort((np.asarray(impressions["position"].to_pylist()), rid))
        _, first = np.unique(rid[order], return_index=True)
        spans = list(zip(first, np.r_[first[1:], len(order)]))
        items = np.asarray(impressions["item_id"].to_pylist(), dtype=object)[order]
        log_p = np.log(np.clip(np.asarray(impressions["propensity"].to_pylist(), dtype=np.float64), 1e-300, None))
        users = impressions["user_id"].to_pylist() if "user_id" in impressions.column_names else [None] * len(rid)
        users = np.asarray(users, dtype=object)[order]
        log_p, reward = log_p[order], reward[order]
        return cls([users[lo] for lo, _ in spans], [list(items[lo:hi]) for lo, hi in spans],
                   np.array([log_p[lo:hi].sum() for lo, hi in spans]), np.array([reward[lo:hi].sum() for lo, hi in spans]))

    def weights(self, rank: Ranker, epsilon: float) -> np.ndarray:
        """``pi_e(slate) / pi_b(slate)`` per request for epsilon-greedy over ``rank``'s rankings."""
        log_e = np.array([slate_log_prob(r, s, epsilon) for r, s in zip(rank(self.users), self.slates)])
        return np.exp(log_e - self.log_b)


def target_slate_value(impressions: pa.Table, events: pa.Table, rank: Ranker, epsilon: float,
                       bootstrap: int = 1000, seed: int = 0) -> dict:
    """Slate IPS/SNIPS of epsilon-greedy over ``rank``'s rankings on the logged requests."""
    logged = LoggedSlates.of(impressions, events)
    w, value = logged.weights(rank, epsilon), logged.value
    wr = w * value
    ips: dict[str, float | list[float]] = {"value": float(wr.mean())}
    snips: dict[str, float | list[float]] = {"value": float(wr.sum() / w.sum()) if w.sum() > 0 else float("nan")}
    out = {"requests": len(w), "epsilon": epsilon,
           "logged": {"value": float(value.mean())},
           "ips": ips,
           "snips": snips,
           "effective_sample_size": effective_sample_size(w),
           "max_weight": float(w.max()), "supported_requests": int((w > 0).sum())}
    if bootstrap:
        idx = np.random.default_rng(seed).integers(0, len(w), size=(bootstrap, len(w)))
        ips["ci95"] = ci95(wr[idx].mean(1))
        snips["ci95"] = ci95(ratio_samples(wr, w, idx))
    return out


def compare_targets(impressions: pa.Table, events: pa.Table, old: Ranker, new: Ranker, epsilon: float,
                    bootstrap: int = 1000, seed: int = 0) -> dict:
    """IPS of two targets on the same logged requests and their paired difference (new - old),
    with a paired bootstrap interval: the same resampled requests for both."""
    logged = LoggedSlates.of(impressions, events)
    w_old, w_new, value = logged.weights(old, epsilon), logged.weights(new, epsilon), logged.value
    d = (w_new - w_old) * value
    out: dict[str, float | list[float]] = {
        "requests": len(value), "epsilon": epsilon, "old_ips": float((w_old * value).mean()),
        "new_ips": float((w_new * value).mean()), "difference": float(d.mean()),
        "old_effective_sample_size": effective_sample_size(w_old),
        "new_effective_sample_size": effective_sample_size(w_new)}
    if bootstrap:
        idx = np.random.default_rng(seed).integers(0, len(d), size=(bootstrap, len(d)))
        out["difference_ci95"] = ci95(d[idx].mean(1))
    return out
