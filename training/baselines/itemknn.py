"""Item-based k-nearest-neighbour collaborative filtering (Sarwar et al., WWW 2001).

Similarity between items ``i`` and ``j`` is cosine over their user sets with a shrinkage term
that damps pairs with little support (Koren, "Factor in the neighbors", TKDD 2010)::

    sim(i, j) = |U_i & U_j| / (sqrt(|U_i|) * sqrt(|U_j|) + shrink)

Only each item's ``neighbours`` most similar items are kept. A user's score for item ``j`` is
``sum_h w_h * sim(h, j)`` over history items ``h``. With ``recency_decay < 1`` the history is
sequence-aware: the item ``a`` steps before the most recent one gets weight
``recency_decay ** a``, so recent interest counts more (as in session-kNN baselines,
Ludewig & Jannach 2018).

>>> from training.data.interactions import Interactions
>>> train = Interactions.from_lists([[0, 1], [0, 1], [2]], num_items=3)
>>> knn = ItemKNN(ItemKNNConfig(neighbours=2, shrink=0.0)).fit(train)
>>> knn.score([0], Interactions.from_lists([[0]], num_items=3)).round(2).tolist()
[[0.0, 1.0, 0.0]]
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from training.data.interactions import Interactions


@dataclass(frozen=True)
class ItemKNNConfig:
    neighbours: int = 100
    shrink: float = 10.0
    recency_decay: float = 1.0  # 1.0: order-free; < 1: weight recent history more
    max_history: int = 0  # 0: whole history

    @classmethod
    def tiny(cls) -> ItemKNNConfig:
        return cls(neighbours=10, shrink=1.0)


class ItemKNN:
    def __init__(self, config: ItemKNNConfig = ItemKNNConfig()) -> None:
        self.config = config
        self.sim: sp.csr_matrix | None = None

    def fit(self, train: Interactions, chunk: int = 4096, budget: int = 20_000_000) -> ItemKNN:
        """Compute the pruned similarity matrix, sparse throughout: only co-occurring pairs have a
        similarity above 0, so the cost follows the co-occurrences, not the catalogue squared (a
        dense row per item took hours at 1M items). Item rows go ``chunk`` at a time, fewer where
        popular items would put more than ``budget`` co-occurrences in one chunk (memory stays
        near 1 GB). Ties in a row's top ``neighbours`` go to the lower item id."""
        x = train.to_csr(binary=True).tocsc()  # users x items
        norms = np.sqrt(np.asarray(x.sum(axis=0)).ravel())
        xt = x.T.tocsr()
        n = train.num_items
        k = min(self.config.neighbours, max(n - 1, 1))
        # an upper bound of each item row's co-occurrences: the history lengths of its users
        bound = np.asarray(xt @ np.asarray(x.sum(axis=1)).ravel()).ravel()
        cuts, lo = [], 0
        while lo < n:
            hi = min(lo + chunk, n)
            within = int(np.searchsorted(np.cumsum(bound[lo:hi]), budget, side="right"))
            hi = lo + max(1, min(hi - lo, within))
            cuts.append((lo, hi))
            lo = hi
        rows, cols, vals = [], [], []
        for lo, hi in cuts:
            co = (xt[lo:hi] @ x).tocoo()  # co-occurrence counts, (chunk, n), sparse
            r, c = co.row.astype(np.int64), co.col.astype(np.int64)
            sim = (co.data / (norms[r + lo] * norms[c] + self.config.shrink)).astype(np.float32)
            keep = (c != r + lo) & (sim > 0)  # no self-similarity
            r, c, sim = r[keep], c[keep], sim[keep]
            order = np.lexsort((c, -sim, r))  # per row: best first, ties to the lower item id
            r, c, sim = r[order], c[order], sim[order]
            rank = np.arange(len(r)) - np.searchsorted(r, r)  # position within the row
            top = rank < k
            rows.append(r[top] + lo)
            cols.append(c[top])
            vals.append(sim[top])
        self.sim = sp.csr_matrix(
            (np.concatenate(vals).astype(np.float32) if vals else np.zeros(0, np.float32),
             (np.concatenate(rows) if rows else np.zeros(0, np.int64),
              np.concatenate(cols) if cols else np.zeros(0, np.int64))), shape=(n, n))
        return self

    def arrays(self) -> dict[str, np.ndarray]:
        """The similarity table (CSR arrays)."""
        sim = self.sim
        if sim is None:
            raise RuntimeError("ItemKNN.arrays called before fit")
        return {"data": sim.data, "indices": sim.indices, "indptr": sim.indptr,
                "shape": np.asarray(sim.shape, dtype=np.int64)}

    @classmethod
    def from_arrays(cls, config: dict, arrays: dict[str, np.ndarray]) -> ItemKNN:
        model = cls(ItemKNNConfig(**config))
        model.sim = sp.csr_matrix((arrays["data"], arrays["indices"], arrays["indptr"]),
                                  shape=tuple(arrays["shape"]))
        return model

    def state(self) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
        """``(config, model state)`` for a model directory (one component, ``knn``)."""
        return dataclasses.asdict(self.config), {"knn": self.arrays()}

    @classmethod
    def from_state(cls, config: dict, state: dict[str, dict[str, np.ndarray]]) -> ItemKNN:
        from training.models.state import component

        return cls.from_arrays(config, component(state, "knn"))

    def _history_weights(self, history: Interactions) -> sp.csr_matrix:
        lengths = history.lengths()
        # age 0 = most recent item of each row
        age = np.repeat(history.indptr[1:], lengths) - 1 - np.arange(history.nnz)
        weights = np.power(self.config.recency_decay, age, dtype=np.float64)
        if self.config.max_history > 0:
            weights = np.where(age < self.config.max_history, weights, 0.0)
        return history.to_csr(weights=weights, binary=False)

    def score(self, users, history: Interactions) -> np.ndarray:
        if self.sim is None:
            raise RuntimeError("ItemKNN.score called before fit")
        return (self._history_weights(history) @ self.sim).toarray()
