"""What the ingress needs to know about the shop: external ids, item facts for filters, user histories.

Loaded once per replica from a Raycart dataset directory (local or S3). Plain Python.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.data.dataset import load_dataset
from training.data.interactions import Interactions


@dataclass
class Catalog:
    item_ids: list[str]  # external id per internal item id
    item_index: dict[str, int]
    titles: list[str | None]
    categories: list[str | None]
    prices: np.ndarray  # NaN where unknown
    user_index: dict[str, int]
    histories: Interactions  # every user's items, first interaction each, oldest first
    base_items: int = 0  # catalogue items of the dataset; the rest were added at runtime

    @classmethod
    def load(cls, data: str) -> Catalog:
        ds = load_dataset(data)
        items = ds.items
        ids = items["external_id"].to_pylist()
        prices = np.array([np.nan if p is None else p for p in items["price"].to_pylist()], dtype=np.float64)
        users = ds.users["external_id"].to_pylist()
        return cls(ids, {x: i for i, x in enumerate(ids)}, items["title"].to_pylist(), items["category"].to_pylist(),
                   prices, {x: i for i, x in enumerate(users)}, ds.interactions(dedupe=True), len(ids))

    def add(self, record: dict) -> int:
        """An item added at runtime (the next internal id; same order as the ItemRegistry)."""
        self.item_index[record["item_id"]] = len(self.item_ids)
        self.item_ids.append(record["item_id"])
        self.titles.append(record.get("title") if isinstance(record.get("title"), str) else None)
        self.categories.append(record.get("category") if isinstance(record.get("category"), str) else None)
        try:  # a stored record is not trusted: a bad price is unknown, not a crash
            raw = record.get("price")
            price = float(raw) if raw is not None else np.nan  # float(None) was a TypeError: the same nan
        except (TypeError, ValueError):
            price = np.nan
        self.prices = np.r_[self.prices, price]
        return len(self.item_ids) - 1

    @property
    def added(self) -> int:
        """Items added at runtime so far (the registry records this catalogue has applied)."""
        return len(self.item_ids) - self.base_items

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def history_of(self, user_id: str | None) -> tuple[int | None, np.ndarray, np.ndarray]:
        """``(internal user id or None, items, times in microseconds)`` for a known user;
        ``(None, [], [])`` for a new one."""
        if user_id is None or user_id not in self.user_index:
            return None, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        u = self.user_index[user_id]
        lo, hi = self.histories.indptr[u], self.histories.indptr[u + 1]
        return u, self.histories.items[lo:hi].copy(), self.histories.times[lo:hi].copy()

    def allowed(self, item: int, category: str | None, price_min: float | None, price_max: float | None) -> bool:
        if category is not None and self.categories[item] != category:
            return False
        price = self.prices[item]
        if price_min is not None and not (price >= price_min):
            return False
        return not (price_max is not None and not (price <= price_max))
