"""Per-user item sequences in CSR form: the shape every model, baseline and metric consumes.

``Interactions(indptr, items, times)``: user ``u``'s items, oldest first, are
``items[indptr[u]:indptr[u + 1]]``. Users with no items have an empty row, so row ``u`` is
always user ``u``.

>>> seqs = Interactions.from_lists([[3, 1], [], [2]], num_items=4)
>>> seqs.row(0).tolist(), seqs.lengths().tolist()
([3, 1], [2, 0, 1])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


@dataclass(frozen=True)
class Interactions:
    indptr: np.ndarray  # int64, shape (num_users + 1,)
    items: np.ndarray  # int64, shape (nnz,)
    times: np.ndarray  # int64 (microseconds since epoch), shape (nnz,)
    num_items: int

    @property
    def num_users(self) -> int:
        return len(self.indptr) - 1

    @property
    def nnz(self) -> int:
        return len(self.items)

    def row(self, u: int) -> np.ndarray:
        return self.items[self.indptr[u]:self.indptr[u + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.indptr)

    def user_of_position(self) -> np.ndarray:
        return np.repeat(np.arange(self.num_users, dtype=np.int64), self.lengths())

    @classmethod
    def from_lists(cls, rows: list[list[int]], num_items: int) -> Interactions:
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        items = np.array([i for r in rows for i in r], dtype=np.int64)
        return cls(indptr, items, np.arange(len(items), dtype=np.int64), num_items)

    @classmethod
    def from_events(cls, users: np.ndarray, items: np.ndarray, times: np.ndarray, seq: np.ndarray,
                    num_users: int, num_items: int, dedupe: bool = False) -> Interactions:
        order = np.lexsort((seq, times, users))
        users, items, times = users[order], items[order], times[order]
        if dedupe and len(users):
            key = users.astype(np.int64) * num_items + items
            _, first = np.unique(key, return_index=True)
            keep = np.sort(first)
            users, items, times = users[keep], items[keep], times[keep]
        counts = np.bincount(users, minlength=num_users)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cls(indptr, items.astype(np.int64), times.astype(np.int64), num_items)

    def select(self, keep: np.ndarray) -> Interactions:
        """Keep the positions where the boolean mask ``keep`` (shape ``(nnz,)``) is true."""
        counts = np.bincount(self.user_of_position()[keep], minlength=self.num_users)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return Interactions(indptr, self.items[keep], self.times[keep], self.num_items)

    def drop_last(self, n: int) -> Interactions:
        """Each user's sequence without its last ``n`` items."""
        pos = np.arange(self.nnz) - np.repeat(self.indptr[:-1], self.lengths())
        keep = pos < np.repeat(self.lengths() - n, self.lengths())
        return self.select(keep)

    def last(self, offset: int) -> np.ndarray:
        """The item ``offset`` places from the end of each row (1 = last); -1 where too short."""
        lengths = self.lengths()
        out = np.full(self.num_users, -1, dtype=np.int64)
        ok = lengths >= offset
        out[ok] = self.items[self.indptr[1:][ok] - offset]
        return out

    def take_users(self, users: np.ndarray) -> Interactions:
        """Rows for ``users`` (in that order) as a new Interactions with ``len(users)`` rows."""
        starts, ends = self.indptr[users], self.indptr[users + 1]
        lengths = ends - starts
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        idx = np.repeat(starts - indptr[:-1], lengths) + np.arange(indptr[-1])
        return Interactions(indptr, self.items[idx], self.times[idx], self.num_items)

    def to_csr(self, weights: np.ndarray | None = None, binary: bool = True) -> sp.csr_matrix:
        """The user x item matrix. Repeated items sum their weights unless ``binary``."""
        data = np.ones(self.nnz, dtype=np.float32) if weights is None else weights.astype(np.float32)
        mat = sp.csr_matrix((data, self.items, self.indptr), shape=(self.num_users, self.num_items))
        mat.sum_duplicates()
        if binary:
            mat.data[:] = 1.0
        return mat

    def item_counts(self) -> np.ndarray:
        return np.bincount(self.items, minlength=self.num_items)
