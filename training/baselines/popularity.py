"""Most-popular baseline (PopRec): every user gets the items with the most interactions.

>>> from training.data.interactions import Interactions
>>> pop = Popularity().fit(Interactions.from_lists([[0, 1], [1], [1, 2]], num_items=3))
>>> pop.counts.tolist()
[1.0, 3.0, 1.0]
"""

from __future__ import annotations

import numpy as np

from training.data.interactions import Interactions


class Popularity:
    def __init__(self) -> None:
        self.counts: np.ndarray | None = None

    def fit(self, train: Interactions) -> Popularity:
        self.counts = train.item_counts().astype(np.float32)
        return self

    def state(self) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
        """``(config, model state)`` for a model directory (one component, ``popularity``)."""
        if self.counts is None:
            raise RuntimeError("Popularity.state called before fit")
        return {}, {"popularity": {"counts": self.counts}}

    @classmethod
    def from_state(cls, config: dict, state: dict[str, dict[str, np.ndarray]]) -> Popularity:
        from training.models.state import component

        model = cls()
        model.counts = component(state, "popularity")["counts"].astype(np.float32)
        return model

    def score(self, users: np.ndarray, history: Interactions) -> np.ndarray:
        if self.counts is None:
            raise RuntimeError("Popularity.score called before fit")
        return np.broadcast_to(self.counts, (len(users), len(self.counts)))
