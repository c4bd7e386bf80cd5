"""Full-ranking top-K metrics, vectorised in torch and batched over users.

Protocol (S3-Rec "all-rank"): every target is ranked against **all** candidate items; the
user's history items are removed from the ranking. Ties are broken deterministically: among
equal scores the lower item id ranks first, so results never depend on hardware or thread
count.

For a user with targets ``T`` and 0-based target ranks ``r_t``:

* ``HR@K``      1 if any ``r_t < K``
* ``Recall@K``  ``|{t : r_t < K}| / |T|``  (equals HR@K with one target)
* ``NDCG@K``    ``sum_{r_t < K} 1/log2(r_t + 2)`` divided by the ideal DCG of ``min(|T|, K)`` hits
* ``MRR``       ``1 / (min_t r_t + 1)`` (no cut-off)
* ``Coverage@K`` share of candidate items that appear in at least one user's top K

Metrics are averaged over the evaluated users.

>>> import numpy as np
>>> from training.data.interactions import Interactions
>>> hist = Interactions.from_lists([[0]], num_items=4)
>>> tgt = Interactions.from_lists([[2]], num_items=4)
>>> scores = np.array([[9.0, 1.0, 5.0, 5.0]])  # item 0 is history; 2 and 3 tie, 2 wins
>>> rank_targets(scores, hist, tgt).tolist()
[[0]]
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from training.data.interactions import Interactions
from training.data.splits import EvalTask

log = logging.getLogger(__name__)

ScoreFn = Callable[[np.ndarray, Interactions], "np.ndarray | torch.Tensor"]


@dataclass(frozen=True)
class EvalConfig:
    ks: tuple[int, ...] = (5, 10, 20)
    batch_size: int = 512
    progress: bool = False

    @classmethod
    def tiny(cls) -> EvalConfig:
        return cls(ks=(1, 5, 10), batch_size=8)


def _as_float_tensor(scores) -> torch.Tensor:
    """A float32 CPU tensor the caller owns (always a copy: masking writes into it)."""
    if isinstance(scores, torch.Tensor):
        return scores.detach().to("cpu", torch.float32, copy=True)
    return torch.from_numpy(np.array(scores, dtype=np.float32))


def _pad(rows: Interactions) -> torch.Tensor:
    lengths = rows.lengths()
    width = max(1, int(lengths.max(initial=0)))
    out = np.full((rows.num_users, width), -1, dtype=np.int64)
    pos = np.arange(rows.nnz) - np.repeat(rows.indptr[:-1], lengths)
    out[rows.user_of_position(), pos] = rows.items
    return torch.from_numpy(out)


def _mask(scores: torch.Tensor, history: Interactions, candidates: np.ndarray | None) -> torch.Tensor:
    """Set excluded items to -inf, in place."""
    if candidates is not None:
        scores[:, ~torch.from_numpy(candidates)] = -math.inf
    rows = torch.from_numpy(history.user_of_position())
    scores[rows, torch.from_numpy(history.items)] = -math.inf
    return scores


def rank_targets(scores, history: Interactions, targets: Interactions,
                 candidates: np.ndarray | None = None) -> torch.Tensor:
    """0-based rank of every target among the candidates, history excluded; -1 pads.

    Returns a ``(B, T_max)`` int64 tensor; a target that is itself excluded ranks after every
    candidate (it can never be a hit).
    """
    return _ranks(_masked(scores, history, candidates), targets)


def _masked(scores, history: Interactions, candidates: np.ndarray | None) -> torch.Tensor:
    s = _as_float_tensor(scores)
    if torch.isnan(s).any():
        raise ValueError("scores contain NaN")
    return _mask(s, history, candidates)


def _ranks(s: torch.Tensor, targets: Interactions) -> torch.Tensor:
    tgt = _pad(targets)
    valid = tgt >= 0
    t_scores = s.gather(1, tgt.clamp(min=0))
    ids = torch.arange(s.shape[1])[None, :]
    ranks = torch.empty_like(tgt)
    for j in range(tgt.shape[1]):
        ts, t = t_scores[:, j:j + 1], tgt[:, j:j + 1]
        ranks[:, j] = torch.count_nonzero((s > ts) | ((s == ts) & (ids < t)), dim=1)
    excluded = torch.isneginf(t_scores)
    if excluded.any():
        # an excluded target must not count as ranked among the -inf tail
        n_cand = torch.isfinite(s).sum(1, keepdim=True)
        ranks = torch.where(excluded, torch.maximum(ranks, n_cand), ranks)
    return torch.where(valid, ranks, torch.full_like(ranks, -1))


def _top_k_exact(s: torch.Tensor, k: int) -> torch.Tensor:
    kth = torch.topk(s, k, dim=1).values[:, -1:]
    gt = s > kth
    eq = s == kth
    need = k - gt.sum(1, keepdim=True)
    chosen = gt | (eq & (eq.cumsum(1, dtype=torch.int32) <= need))
    return chosen.nonzero()[:, 1].view(s.shape[0], k)  # ascending ids per row


def top_k(s: torch.Tensor, k: int, margin: int = 64) -> torch.Tensor:
    """Each row's ``k`` best item ids, best first, ties to the lower item id; -1 pads rows
    with fewer than ``k`` finite scores.

    Takes ``k + margin`` by ``torch.topk`` (whose order among ties is unspecified); when the
    last of those scores is strictly below the k-th, every item tied with the k-th is among
    them and a stable sort settles the order. Rows with longer ties take the exact path.
    """
    n = s.shape[1]
    k = min(k, n)
    wide = min(k + margin, n)
    vals, ids = torch.topk(s, wide, dim=1)
    if wide < n:
        ragged = ~(vals[:, -1] < vals[:, k - 1])
        if ragged.any():
            rows = ragged.nonzero()[:, 0]
            exact = _top_k_exact(s[rows], k)
            pad = torch.full((len(rows), wide - k), -1, dtype=exact.dtype)
            ids[rows] = torch.cat([exact, pad], 1)
            vals[rows] = torch.cat([s[rows].gather(1, exact),
                                    torch.full((len(rows), wide - k), -math.inf)], 1)
    # order by id, then stably by score: equal scores stay in ascending id order
    by_id = torch.sort(torch.where(ids >= 0, ids, torch.full_like(ids, n)), dim=1).indices
    ids, vals = ids.gather(1, by_id), vals.gather(1, by_id)
    order = torch.sort(vals, dim=1, descending=True, stable=True).indices[:, :k]
    ids, vals = ids.gather(1, order), vals.gather(1, order)
    return torch.where(torch.isfinite(vals), ids, torch.full_like(ids, -1))


def evaluate(score_fn: ScoreFn, task: EvalTask, config: EvalConfig = EvalConfig(),
             per_user: dict[str, np.ndarray] | None = None) -> dict:
    """Rank every target of ``task`` with ``score_fn`` and average the metrics over users.

    Args:
        score_fn: ``score_fn(users, history) -> scores`` with ``scores`` of shape
            ``(len(users), num_items)``; higher is better. ``history`` holds the users' input
            sequences, oldest first.
        task: a split part from :func:`training.data.splits.build_split`.

    Returns:
        ``{"HR@10": ..., "NDCG@10": ..., "Recall@10": ..., "Coverage@10": ..., "MRR": ...,
        "users": n}`` for every K in ``config.ks``. A ``per_user`` dict receives each user's
        ``NDCG@K`` (arrays in ``task.users`` order), for paired comparisons of two models.
    """
    n_users, n_items = len(task.users), task.num_items
    ks = sorted(config.ks)
    sums = {f"{m}@{k}": 0.0 for k in ks for m in ("HR", "Recall", "NDCG")}
    sums["MRR"] = 0.0
    covered = {k: torch.zeros(n_items, dtype=torch.bool) for k in ks}
    discounts = 1.0 / torch.log2(torch.arange(2, max(ks) + 2, dtype=torch.float64))
    ideal = torch.cumsum(discounts, 0)
    start = time.time()
    rows_ndcg: dict[int, list[np.ndarray]] = {k: [] for k in ks}
    for lo in range(0, n_users, config.batch_size):
        hi = min(lo + config.batch_size, n_users)
        rows = np.arange(lo, hi)
        history = task.history.take_users(rows)
        targets = task.targets.take_users(rows)
        scores = score_fn(task.users[lo:hi], history)
        if tuple(scores.shape) != (hi - lo, n_items):
            raise ValueError(f"score_fn returned shape {tuple(scores.shape)}, "
                             f"expected {(hi - lo, n_items)}")
        masked = _masked(scores, history, task.candidates)
        ranks = _ranks(masked, targets)
        valid = ranks >= 0
        n_t = valid.sum(1).clamp(min=1).double()
        r = torch.where(valid, ranks, torch.full_like(ranks, 1 << 40))
        sums["MRR"] += (1.0 / (r.min(1).values.double() + 1)).sum().item()
        best = top_k(masked, max(ks))
        for k in ks:
            hit = r < k
            sums[f"HR@{k}"] += hit.any(1).double().sum().item()
            sums[f"Recall@{k}"] += (hit.sum(1).double() / n_t).sum().item()
            gain = torch.where(hit, discounts[r.clamp(max=k - 1)], torch.zeros((), dtype=torch.float64))
            idcg = ideal[(n_t.long().clamp(max=k)) - 1]
            user_ndcg = gain.sum(1) / idcg
            sums[f"NDCG@{k}"] += user_ndcg.sum().item()
            if per_user is not None:
                rows_ndcg[k].append(user_ndcg.numpy())
            ids = best[:, :k]
            covered[k][ids[ids >= 0]] = True
        if config.progress:
            rate = hi / max(time.time() - start, 1e-9)
            log.info(f"  evaluated {hi}/{n_users} users ({rate:,.0f}/s, ETA {(n_users - hi) / rate:.0f}s)")
    out = {key: value / max(n_users, 1) for key, value in sums.items()}
    if per_user is not None:
        for k in ks:
            per_user[f"NDCG@{k}"] = np.concatenate(rows_ndcg[k]) if rows_ndcg[k] else np.zeros(0)
    n_cand = int(task.candidates.sum()) if task.candidates is not None else n_items
    for k in ks:
        out[f"Coverage@{k}"] = covered[k].sum().item() / max(n_cand, 1)
    out["users"] = n_users
    return dict(sorted(out.items(), key=lambda kv: _key_order(kv[0])))


def _key_order(key: str) -> tuple:
    name, _, k = key.partition("@")
    order = {"HR": 0, "NDCG": 1, "Recall": 2, "Coverage": 3, "MRR": 4, "users": 5}
    return (int(k) if k else 10**9, order.get(name, 9))
