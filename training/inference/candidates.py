"""Stage one of retrieve-then-rank: the retriever's top-K candidates and their dense features.

:class:`CandidateGenerator` holds what a candidate's features come from -- the trained retriever, an
item-kNN model over the same interactions, item popularity and price -- and turns a batch of user
histories into ``(candidates, dense features)``; with ``targets`` it also makes sure the true next
items are marked in each list (for training the ranker). Plain numpy/torch: the same object
runs in the driver, in Ray Data batch inference (:func:`generate_candidates`) and in serving.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from training.baselines.itemknn import ItemKNN
from training.data.interactions import Interactions
from training.data.schema import TimestampKind
from training.evaluation.metrics import top_k
from training.models.ranker import DENSE_FEATURES
from training.models.retriever import ItemFeatures, RetrieverScorer


@dataclass
class Candidates:
    users: np.ndarray  # (N,) row ids of the histories they came from
    items: np.ndarray  # (N, K) item ids, retriever order; -1 where fewer than K items were left
    dense: np.ndarray  # (N, K, F) float32, columns DENSE_FEATURES
    label: np.ndarray  # (N, K) bool: which candidates are targets (all False without targets)


class CandidateGenerator:
    """``log_pop``/``log_price`` per item; ``event_keys``: the training events as sorted
    ``item << 32 | seconds since time_origin`` keys, for each candidate's recent popularity (its
    interactions in the ``recent_days`` before the user's last event: what is selling *now*).

    ``recent_days=None``: the recent-popularity feature is **off** -- 0 for every candidate. That is
    the setting for a dataset whose timestamps are sequence positions (``timestamps="position"``,
    the Amazon files): there the window "30 days before the user's last event" holds every
    training event at a position up to the user's own length, so the count is the item's
    popularity among *early positions* of all users, not recency; and positions of different
    users are not comparable, so no window over them would mean "recent" either."""

    RECENT_DAYS = 30

    def __init__(self, retriever: RetrieverScorer, knn: ItemKNN, log_pop: np.ndarray, log_price: np.ndarray,
                 event_keys: np.ndarray, time_origin: int, recent_days: int | None = RECENT_DAYS):
        if recent_days is not None and recent_days <= 0:
            raise ValueError(f"recent_days must be positive or None (feature off), got {recent_days}")
        self.retriever, self.knn = retriever, knn
        self.log_pop, self.log_price = log_pop.astype(np.float32), log_price.astype(np.float32)
        self.event_keys, self.time_origin = event_keys.astype(np.int64), int(time_origin)
        self.recent_days = recent_days
        # the last training event (microseconds): "now" for a history without times
        self.end_us = (self.time_origin + int((self.event_keys & (2**32 - 1)).max()) if len(self.event_keys)
                       else 0) * 1_000_000

    @classmethod
    def fit(cls, retriever: RetrieverScorer, knn: ItemKNN, train: Interactions, prices: np.ndarray,
            timestamps: TimestampKind = "time") -> CandidateGenerator:
        """Item statistics from ``train`` (what the models were fitted on) and the catalogue prices;
        ``timestamps``: what ``train.times`` are (the dataset's ``timestamps``) -- ``"position"``
        turns recent popularity off (see the class)."""
        if timestamps == "position":
            return cls(retriever, knn, np.log1p(train.item_counts().astype(np.float32)), _log_price(prices),
                       np.zeros(0, np.int64), 0, recent_days=None)
        if timestamps != "time":
            raise ValueError(f"timestamps must be 'time' or 'position', got {timestamps!r}")
        seconds = train.times // 1_000_000
        origin = int(seconds.min()) if len(seconds) else 0
        keys = np.sort((train.items.astype(np.int64) << 32) | np.clip(seconds - origin, 0, 2**32 - 1))
        return cls(retriever, knn, np.log1p(train.item_counts().astype(np.float32)), _log_price(prices), keys, origin)

    def add_items(self, new: ItemFeatures, prices: np.ndarray) -> np.ndarray:
        """Items added at runtime: content vectors from the retriever's item tower (returned, for
        the vector index), no interactions yet (popularity, kNN and recent counts 0)."""
        vecs = self.retriever.add_items(new)
        assert self.knn.sim is not None, "the stage's kNN is fitted"
        n = self.knn.sim.shape[0] + new.num_items
        self.knn.sim = sp.csr_matrix((self.knn.sim.data, self.knn.sim.indices,
                                      np.r_[self.knn.sim.indptr, np.full(new.num_items, self.knn.sim.nnz)]),
                                     shape=(n, n))
        self.log_pop = np.r_[self.log_pop, np.zeros(new.num_items, np.float32)]
        self.log_price = np.r_[self.log_price, _log_price(prices)]
        return vecs

    def arrays(self) -> dict[str, np.ndarray]:
        return {"log_pop": self.log_pop, "log_price": self.log_price, "event_keys": self.event_keys,
                "time_origin": np.asarray(self.time_origin, np.int64),
                "recent_days": np.asarray(self.recent_days or 0, np.int64)}

    @staticmethod
    def recent_days_of(arrays) -> int | None:
        """The ``recent_days`` stored by :meth:`arrays` (0: off); a state saved before it was stored
        had the feature on with :attr:`RECENT_DAYS`."""
        days = int(arrays["recent_days"]) if "recent_days" in arrays else CandidateGenerator.RECENT_DAYS
        return days or None

    def _now(self, history: Interactions) -> np.ndarray:
        """Per row: the time of its last event; for an empty history, the end of the training data."""
        now = np.full(history.num_users, self.end_us, dtype=np.int64)
        filled = history.lengths() > 0
        now[filled] = history.times[history.indptr[1:][filled] - 1]
        return now

    def recent_counts(self, items: np.ndarray, now_us: np.ndarray) -> np.ndarray:
        """Training interactions of ``items[b, j]`` in the ``recent_days`` before ``now_us[b]``;
        all 0 when the feature is off (``recent_days`` None)."""
        if self.recent_days is None:
            return np.zeros(np.shape(items), dtype=np.int64)
        now = np.clip(now_us // 1_000_000 - self.time_origin, 0, 2**32 - 1)[:, None]
        start = np.clip(now - self.recent_days * 86_400, 0, None)
        base = items.astype(np.int64) << 32
        return (np.searchsorted(self.event_keys, base | now, side="right")
                - np.searchsorted(self.event_keys, base | start, side="left"))

    @torch.no_grad()
    def generate(self, history: Interactions, k: int, targets: Interactions | None = None) -> Candidates:
        """Top-``k`` unseen items for each history row; with ``targets`` (row ``u``: the items user
        ``u`` went on to have), ``label`` marks them in the lists. Targets the retriever did not
        rank in its top ``k`` are *not* inserted: their features (a far-down retriever rank and
        score) never occur among real candidates, and a ranker trained on them learns exactly that
        tell-tale sign instead of what makes an item right."""
        n = history.num_users
        scores = self.retriever.score(None, history).float()
        for u in range(n):  # the protocol never recommends an item from the history
            scores[u, torch.from_numpy(history.row(u))] = -torch.inf
        items = top_k(scores, k).numpy().copy()
        label = np.zeros(items.shape, dtype=bool)
        if targets is not None:
            for u in range(n):
                label[u] = np.isin(items[u], targets.row(u)) & (items[u] >= 0)
        return Candidates(np.arange(n), items, self._scored_features(history, items, scores.numpy(), top=True), label)

    @torch.no_grad()
    def given(self, history: Interactions, items: np.ndarray, label: np.ndarray) -> Candidates:
        """Features of given candidate ``items`` (``-1`` = none; a slate the app showed, say) for each
        history row, with the retriever's score and rank of each as if it had retrieved them."""
        scores = self.retriever.score(None, history).float()
        for u in range(history.num_users):  # as in generate: a history item is never a candidate
            scores[u, torch.from_numpy(history.row(u))] = -torch.inf
        return Candidates(np.arange(history.num_users), items, self._scored_features(history, items, scores.numpy()),
                          label)

    def _scored_features(self, history: Interactions, items: np.ndarray, retr: np.ndarray,
                         top: bool = False) -> np.ndarray:
        """``top``: ``items`` are each row's best-scored items, best first (``generate``), so every
        item scoring higher than a candidate is among them and its rank comes from the list itself
        -- no sort of the whole catalogue per user (100 ms a user at 1M items)."""
        safe = np.where(items >= 0, items, 0)
        retr_score = np.take_along_axis(retr, safe, 1)
        if top and (items >= 0).all():
            # rank = items scoring strictly higher = entries before the first one tied with it
            rank = np.stack([np.searchsorted(-retr_score[u], -retr_score[u], side="left")
                             for u in range(len(items))]) if len(items) else np.zeros(items.shape, np.int64)
            return self.features(history, items, retr_score, rank)
        # rank of each candidate in the full retriever ordering (items scoring strictly higher)
        asc = np.sort(retr, axis=1)
        rank = np.stack([retr.shape[1] - np.searchsorted(asc[u], retr_score[u], side="right")
                         for u in range(len(items))]) if len(items) else np.zeros(items.shape, np.int64)
        return self.features(history, items, retr_score, rank)

    def from_search(self, history: Interactions, items: np.ndarray, scores: np.ndarray) -> Candidates:
        """Candidates found by an external vector index (best first, -1 padded; history already
        excluded): the same features, with the result position as the retriever rank."""
        rank = np.broadcast_to(np.arange(items.shape[1]), items.shape)
        return Candidates(np.arange(history.num_users), items, self.features(history, items, scores, rank),
                          np.zeros(items.shape, dtype=bool))

    def features(self, history: Interactions, items: np.ndarray, retr_score: np.ndarray,
                 rank: np.ndarray) -> np.ndarray:
        """``(N, K, F)`` dense features (:data:`DENSE_FEATURES`) of candidate ``items`` (-1 = none)."""
        safe = np.where(items >= 0, items, 0)
        knn = np.take_along_axis(self.knn.score(None, history), safe, 1)
        recent = self.recent_counts(safe, self._now(history))
        dense = np.stack([np.where(np.isfinite(retr_score), retr_score, 0.0), np.log1p(rank),
                          np.log1p(np.maximum(knn, 0.0)), self.log_pop[safe], self.log_price[safe],
                          np.log1p(recent)], axis=-1).astype(np.float32)
        assert dense.shape[-1] == len(DENSE_FEATURES)
        dense[items < 0] = 0.0
        return dense


def _log_price(prices) -> np.ndarray:
    """The price feature: log(1 + price), 0 where unknown."""
    return np.log1p(np.nan_to_num(np.asarray(prices, np.float32), nan=0.0).clip(min=0.0))


def catalogue_scores(items: np.ndarray, logits: torch.Tensor, num_items: int) -> torch.Tensor:
    """``(N, num_items)`` scores for the evaluation harness: ``logits`` on the candidate ``items``
    (-1 = none), -inf on every other item."""
    ids = torch.from_numpy(items)
    out = torch.full((len(ids), num_items), -torch.inf)
    ok = ids >= 0
    rows = torch.arange(len(ids))[:, None].expand_as(ids)
    out[rows[ok], ids[ok]] = logits[ok].float()
    return out


def generate_candidates(generator_ref, history: Interactions, k: int, targets: Interactions | None = None,
                        concurrency: int = 1, batch_size: int = 256) -> Candidates:
    """:meth:`CandidateGenerator.generate` over every history row as Ray Data batch inference: rows go
    out in batches to an actor pool that holds the stage (``generator_ref``: an object ref of it)."""
    import ray
    import ray.data

    class _Actor:
        def __init__(self):
            self.generator = ray.get(generator_ref)
            self.history, self.targets = ray.get(hist_ref), ray.get(tgt_ref)

        def __call__(self, batch: dict) -> dict:
            rows = batch["row"]
            tg = self.targets.take_users(rows) if self.targets is not None else None
            c = self.generator.generate(self.history.take_users(rows), k, tg)
            return {"row": rows, "items": c.items, "dense": c.dense, "label": c.label}

    import pyarrow as pa

    hist_ref, tgt_ref = ray.put(history), ray.put(targets)
    ds = ray.data.from_arrow(pa.table({"row": np.arange(history.num_users)}))
    parts = list(ds.map_batches(_Actor, batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=concurrency),
                                 batch_format="numpy")
                 .iter_batches(batch_size=None, batch_format="numpy"))
    out = {key: np.concatenate([p[key] for p in parts]) for key in ("row", "items", "dense", "label")}
    order = np.argsort(out["row"], kind="stable")
    return Candidates(out["row"][order], out["items"][order], out["dense"][order], out["label"][order])
