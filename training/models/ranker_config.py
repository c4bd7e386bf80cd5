"""The ranker's typed configuration (torch-free, so the CLI can read it without loading torch)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

TEXT_TUNE_MODES = ("layers", "lora")


@dataclass(frozen=True)
class RankerConfig:
    dim: int = 64
    hidden: int = 128
    dropout: float = 0.2
    max_len: int = 30  # history items the candidate attends over
    use_id: bool = True
    use_attributes: bool = True
    use_text: bool = True
    use_image: bool = True
    # 0: the item text enters through frozen precomputed features; n > 0: the last n layers of the
    # text encoder are fine-tuned on the ranking loss (candidates only; see models/text_tuning.py)
    text_tune_layers: int = 0
    # how those layers train: "layers" -- all their weights; "lora" -- low-rank adapters (peft LoRA)
    # on their attention query/value projections only, rank ``text_lora_rank``, scale
    # ``text_lora_alpha / text_lora_rank`` (text_tune_layers 6 = every layer of MiniLM)
    text_tune_mode: str = "layers"
    text_lora_rank: int = 8
    text_lora_alpha: float = 16.0
    image_tune_layers: int = 0  # the same for the image encoder's last blocks
    # event types (view < click < cart < purchase) where the data has them: a stage embedding on each
    # history item and two extra heads, P(cart) and P(purchase) of a candidate the user takes up;
    # train_ranker switches it on by itself for such data
    use_stage: bool = False
    aux_weight: float = 0.3  # weight of the cart/purchase heads' loss next to the ranking loss
    train_candidates: int = 50  # retriever top-K per training example (hard negatives)
    eval_candidates: int = 200  # retriever top-K reranked at evaluation / serving
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 64
    grad_accum: int = 1  # optimiser step every n batches (effective batch = n x batch_size x workers)
    epochs: int = 30
    patience: int = 4
    seed: int = 0

    def __post_init__(self):
        if self.grad_accum < 1:
            raise ValueError(f"grad_accum must be >= 1, got {self.grad_accum}")
        if self.text_tune_layers < 0 or self.image_tune_layers < 0:
            raise ValueError("text_tune_layers and image_tune_layers must be >= 0")
        if self.text_tune_mode not in TEXT_TUNE_MODES:
            raise ValueError(f"text_tune_mode: {self.text_tune_mode!r} is not a text fine-tuning mode "
                             f"(choose {' or '.join(TEXT_TUNE_MODES)}; text_tune_layers 0 keeps the encoder frozen)")
        if self.text_tune_mode == "lora" and self.text_tune_layers == 0:
            raise ValueError("text_tune_mode 'lora' needs text_tune_layers > 0 (the top layers that get "
                             "adapters; 6 = all of all-MiniLM-L6-v2)")
        if self.text_lora_rank < 1 or self.text_lora_alpha <= 0:
            raise ValueError("text_lora_rank must be >= 1 and text_lora_alpha > 0")
        if self.train_candidates < 2 or self.eval_candidates < 1:
            raise ValueError("train_candidates must be >= 2 and eval_candidates >= 1")

    @classmethod
    def tiny(cls) -> RankerConfig:
        return cls(dim=16, hidden=32, dropout=0.1, max_len=10, train_candidates=10, eval_candidates=30,
                   batch_size=32, epochs=5, patience=3)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
