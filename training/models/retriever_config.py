"""The retriever's typed configuration (torch-free, so the CLI can read it without loading torch)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class RetrieverConfig:
    """Defaults: the best general configuration known, the best trial of the Beauty sweep
    (BENCHMARKS.md "Ray Tune sweep": one layer, dropout 0.12, lr 0.0034; test NDCG@10 0.0589 in
    12 epochs, where the earlier defaults -- 2 layers, lr 1e-3, 200 epochs -- needed 60 epochs with
    lr 0.002 for 0.0595) with a longer history window and an epoch budget that stops on its own.
    Per-dataset files: ``configs/``."""

    dim: int = 64
    layers: int = 1
    heads: int = 1
    dropout: float = 0.12
    max_len: int = 50
    # what each position learns to predict: "next" item, or an item of the next "basket" (the next
    # distinct timestamp, e.g. invoice) -- for basket data, where the order inside a basket is noise
    target: str = "next"
    windows: int = 1  # training windows of max_len per user, newest first (long histories: > 1)
    use_id: bool = True
    use_attributes: bool = True
    use_text: bool = True
    use_image: bool = True
    loss: str = "full"  # or "sampled"
    num_negatives: int = 1024
    lr: float = 0.0034
    weight_decay: float = 0.0
    batch_size: int = 128
    epochs: int = 30
    patience: int = 4
    seed: int = 0

    def __post_init__(self):
        if self.loss not in ("full", "sampled"):
            raise ValueError(f"loss must be 'full' or 'sampled', got {self.loss!r}")
        if self.target not in ("next", "basket"):
            raise ValueError(f"target must be 'next' or 'basket', got {self.target!r}")
        if self.windows < 1:
            raise ValueError(f"windows must be >= 1, got {self.windows}")
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")

    @classmethod
    def tiny(cls) -> RetrieverConfig:
        return cls(dim=16, layers=1, heads=1, dropout=0.1, max_len=10, batch_size=32, epochs=5,
                   patience=3, num_negatives=16)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
