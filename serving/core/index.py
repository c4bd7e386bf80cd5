"""The retriever's vector index: inner-product search over the item-embedding table (FAISS).

``kind="auto"``: exact search (``IndexFlatIP``) up to ``exact_limit`` items -- at 12k items and 64
dimensions a query costs ~1 ms on one core -- and HNSW (``IndexHNSWFlat``, inner product) above it,
where exact search stops being cheap. ``kind`` also forces ``"exact"``, ``"hnsw"`` or ``"ivf"``
(``IndexIVFFlat``: k-means cells, ``ivf_nprobe`` of ``ivf_nlist`` searched; quicker to build than
HNSW, slower to query at the same recall -- ``benchmarks/catalog_1m.py`` measures both at 1M items).
``recall_vs_exact`` measures what an approximation loses. Items can be
added at runtime (``add``): a new item's content vector becomes retrievable without a rebuild.
Plain Python + faiss, no Ray.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

KINDS = ("auto", "exact", "hnsw", "ivf")


@dataclass(frozen=True)
class IndexConfig:
    kind: str = "auto"
    exact_limit: int = 100_000
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 256  # >= the 200 candidates asked for: recall@200 0.93 on Beauty (0.84 at 128)
    ivf_nlist: int = 4096
    ivf_nprobe: int = 64
    ivf_train_size: int = 200_000  # vectors k-means is trained on (a seeded sample of the catalogue)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"index kind must be one of {KINDS}, got {self.kind!r}")

    @classmethod
    def tiny(cls) -> IndexConfig:
        return cls(exact_limit=100, hnsw_m=16, ef_construction=80, ef_search=64)


class VectorIndex:
    def __init__(self, vectors: np.ndarray, config: IndexConfig = IndexConfig()):
        vecs = np.ascontiguousarray(vectors, dtype=np.float32)
        self.config, self.dim = config, vecs.shape[1]
        kind = config.kind
        if kind == "auto":
            kind = "exact" if len(vecs) <= config.exact_limit else "hnsw"
        if kind == "ivf" and len(vecs) < 39 * config.ivf_nlist:  # faiss wants >= 39 points per cell
            kind = "exact"
        self.kind, self.exact = kind, kind == "exact"
        self.index: faiss.Index
        if kind == "exact":
            self.index = faiss.IndexFlatIP(self.dim)
        elif kind == "hnsw":
            hnsw = faiss.IndexHNSWFlat(self.dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efConstruction = config.ef_construction
            hnsw.hnsw.efSearch = config.ef_search
            self.index = hnsw
        else:
            self.quantizer = faiss.IndexFlatIP(self.dim)  # kept: the IVF index refers to it
            ivf = faiss.IndexIVFFlat(self.quantizer, self.dim, config.ivf_nlist, faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(0)
            sample = vecs[rng.choice(len(vecs), min(len(vecs), config.ivf_train_size), replace=False)]
            ivf.train(sample)
            ivf.nprobe = config.ivf_nprobe
            self.index = ivf
        self.index.add(vecs)

    def __len__(self) -> int:
        return self.index.ntotal

    def add(self, vectors: np.ndarray) -> np.ndarray:
        """Append items; returns their ids (the next internal item ids)."""
        start = self.index.ntotal
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim))
        return np.arange(start, self.index.ntotal)

    def search(self, queries: np.ndarray, k: int, exclude: list[np.ndarray] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` ids and scores per query, best first, skipping ``exclude[i]`` for query ``i``;
        ``-1`` / ``-inf`` pad rows with fewer results."""
        q = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        extra = max((len(e) for e in exclude), default=0) if exclude else 0
        want = min(k + extra, len(self))
        scores, ids = self.index.search(q, want) if want else (np.zeros((len(q), 0)), np.zeros((len(q), 0), int))
        out_ids = np.full((len(q), k), -1, dtype=np.int64)
        out_scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        for i in range(len(q)):
            keep = ids[i] >= 0
            if exclude:
                keep &= ~np.isin(ids[i], exclude[i])
            got_ids, got_scores = ids[i][keep][:k], scores[i][keep][:k]
            out_ids[i, :len(got_ids)], out_scores[i, :len(got_ids)] = got_ids, got_scores
        return out_ids, out_scores


def recall_vs_exact(vectors: np.ndarray, queries: np.ndarray, k: int, config: IndexConfig) -> float:
    """Recall@k of the configured (possibly approximate) index against exact search."""
    approx = VectorIndex(vectors, config)
    exact = VectorIndex(vectors, IndexConfig(kind="exact"))
    a, _ = approx.search(queries, k)
    e, _ = exact.search(queries, k)
    return float(np.mean([len(np.intersect1d(a[i], e[i])) / k for i in range(len(queries))]))
