"""Two-tower sequential retriever with multimodal item representations.

Item representation (the *item tower*)::

    e(i) = [known(i)] * id_emb(i) + W_a * mean(attr_emb(attrs(i))) + W_t * text(i) + W_v * image(i)

each part switchable. ``text(i)`` / ``image(i)`` are precomputed encoder features (frozen mode),
so an item never seen in training still gets a vector from its content; its id embedding is
masked out (``known``), because an untrained id vector is noise.

User tower: a causal Transformer over the user's last ``max_len`` item representations, as in
SASRec (Kang & McAuley, ICDM 2018); the user vector is the last position's output. Score of
item ``i`` for user ``u`` is the dot product ``h(u) . e(i)``.

Losses:
* ``full``: softmax cross-entropy over the whole catalogue at every position. SASRec trained
  this way is much stronger than with one sampled negative (Klenitskiy & Vasilev, "Turning
  Dross Into Gold Loss: is BERT4Rec really better than SASRec?", RecSys 2023).
* ``sampled``: sampled softmax over ``num_negatives`` items drawn from the unigram
  distribution, with the log-Q correction ``logit - log Q(i)`` that removes the sampling bias
  (Bengio & Senecal 2008; Yi et al., "Sampling-Bias-Corrected Neural Modeling for Large Corpus
  Item Recommendations", RecSys 2019), for catalogues too large for the full softmax.

>>> import torch
>>> feats = ItemFeatures.empty(num_items=10)
>>> model = TwoTower(RetrieverConfig.tiny(), feats)
>>> model(torch.tensor([[0, 1, 2]])).shape  # one user vector per sequence
torch.Size([1, 16])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.models.retriever_config import RetrieverConfig

__all__ = ["RetrieverConfig", "ItemFeatures", "ItemTower", "TwoTower", "TwoTowerTrain", "RetrieverScorer",
           "left_pad"]


@dataclass
class ItemFeatures:
    """Per-item inputs of the item tower; rows are item ids ``0..N-1``.

    Attributes:
        known: items seen in training (their id embedding is used).
        attr_indptr / attr_ids: CSR lists of attribute ids per item (``num_attributes`` total).
        text / image: precomputed encoder features, or ``None``.
    """

    num_items: int
    known: np.ndarray
    attr_indptr: np.ndarray
    attr_ids: np.ndarray
    num_attributes: int
    text: np.ndarray | None = None
    image: np.ndarray | None = None

    @classmethod
    def empty(cls, num_items: int) -> ItemFeatures:
        return cls(num_items, np.ones(num_items, bool), np.zeros(num_items + 1, np.int64),
                   np.zeros(0, np.int64), 0)

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"known": self.known, "attr_indptr": self.attr_indptr, "attr_ids": self.attr_ids,
               "num_attributes": np.array(self.num_attributes)}
        if self.text is not None:
            out["text"] = self.text
        if self.image is not None:
            out["image"] = self.image
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> ItemFeatures:
        return cls(len(arrays["known"]), arrays["known"].astype(bool), arrays["attr_indptr"],
                   arrays["attr_ids"], int(arrays["num_attributes"]), arrays.get("text"), arrays.get("image"))


class TowerConfig(Protocol):
    """What an item tower reads from its model's config (the retriever's or the ranker's)."""

    @property
    def dim(self) -> int: ...
    @property
    def use_id(self) -> bool: ...
    @property
    def use_attributes(self) -> bool: ...
    @property
    def use_text(self) -> bool: ...
    @property
    def use_image(self) -> bool: ...


class ItemTower(nn.Module):
    # buffers (register_buffer): the item features
    known: torch.Tensor
    attr_ids: torch.Tensor
    attr_offsets: torch.Tensor
    attr_present: torch.Tensor
    attr_lengths: torch.Tensor
    text: torch.Tensor
    image: torch.Tensor

    def __init__(self, config: TowerConfig, feats: ItemFeatures):
        super().__init__()
        d = config.dim
        self.config = config
        self.num_items = feats.num_items
        self.register_buffer("known", torch.from_numpy(feats.known.astype(np.float32)))
        self.id_emb = nn.Embedding(feats.num_items, d) if config.use_id else None
        self.attr_emb = None
        if config.use_attributes and feats.num_attributes > 0:
            self.attr_emb = nn.EmbeddingBag(feats.num_attributes, d, mode="mean")
            self.register_buffer("attr_ids", torch.from_numpy(feats.attr_ids.astype(np.int64)))
            self.register_buffer("attr_offsets", torch.from_numpy(feats.attr_indptr[:-1].astype(np.int64)))
            self.register_buffer("attr_present", torch.from_numpy((np.diff(feats.attr_indptr) > 0)
                                                                  .astype(np.float32)))
            # per item, for rows(); derived from the features, so not saved with the weights
            self.register_buffer("attr_lengths", torch.from_numpy(np.diff(feats.attr_indptr).astype(np.int64)),
                                 persistent=False)
        self.text_proj = self.image_proj = None
        if config.use_text and feats.text is not None:
            self.register_buffer("text", torch.from_numpy(feats.text.astype(np.float32)))
            self.text_proj = nn.Linear(feats.text.shape[1], d)
        if config.use_image and feats.image is not None:
            self.register_buffer("image", torch.from_numpy(feats.image.astype(np.float32)))
            self.image_proj = nn.Linear(feats.image.shape[1], d)
        if self.id_emb is None and self.attr_emb is None and self.text_proj is None and self.image_proj is None:
            raise ValueError("the item tower has no input: enable ids, attributes, text or image")
        if self.id_emb is not None:
            nn.init.normal_(self.id_emb.weight, std=0.02)

    @torch.no_grad()
    def extend(self, new: ItemFeatures) -> None:
        """Append items added at runtime (not *known*: no id embedding, content only) in place;
        the trained weights are unchanged, so every existing item keeps its vector."""
        m = new.num_items
        self.known = torch.cat([self.known, torch.zeros(m)])
        if self.id_emb is not None:
            weight = torch.cat([self.id_emb.weight, torch.zeros(m, self.id_emb.embedding_dim)])
            self.id_emb = nn.Embedding.from_pretrained(weight, freeze=True)
        if self.attr_emb is not None:
            ids = torch.from_numpy(new.attr_ids.astype(np.int64))
            offsets = torch.from_numpy(new.attr_indptr[:-1].astype(np.int64)) + len(self.attr_ids)
            self.attr_ids = torch.cat([self.attr_ids, ids])
            self.attr_offsets = torch.cat([self.attr_offsets, offsets])
            self.attr_present = torch.cat([self.attr_present,
                                           torch.from_numpy((np.diff(new.attr_indptr) > 0).astype(np.float32))])
            self.attr_lengths = torch.cat([self.attr_lengths,
                                           torch.from_numpy(np.diff(new.attr_indptr).astype(np.int64))])
        for name in ("text", "image"):
            if getattr(self, f"{name}_proj") is not None:
                rows = getattr(new, name)
                old = getattr(self, name)
                rows = torch.zeros(m, old.shape[1]) if rows is None else torch.from_numpy(rows.astype(np.float32))
                setattr(self, name, torch.cat([old, rows]))
        self.num_items += m

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Vectors of the items ``ids`` only, ``(len(ids), dim)``: equal to ``all_items()[ids]`` at
        a cost that grows with ``len(ids)``, not the catalogue (what the sampled softmax needs)."""
        parts = []
        if self.id_emb is not None:
            parts.append(self.id_emb(ids) * self.known[ids, None])
        if self.attr_emb is not None:
            starts, lengths = self.attr_offsets[ids], self.attr_lengths[ids]
            offsets = torch.cumsum(lengths, 0) - lengths
            flat = torch.repeat_interleave(starts - offsets, lengths) + torch.arange(int(lengths.sum()),
                                                                                  device=ids.device)
            parts.append(self.attr_emb(self.attr_ids[flat], offsets) * self.attr_present[ids, None])
        if self.text_proj is not None:
            parts.append(self.text_proj(self.text[ids]))
        if self.image_proj is not None:
            parts.append(self.image_proj(self.image[ids]))
        return torch.stack(parts).sum(0)

    def gather(self, *ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The vectors of the items in ``ids`` (tensors of item ids >= 0, any shapes), each item
        once (:meth:`rows`), and each input re-indexed into them, shape kept."""
        unique, local = torch.unique(torch.cat([t.flatten() for t in ids]), return_inverse=True)
        return self.rows(unique), [part.view_as(t) for part, t in zip(local.split([t.numel() for t in ids]), ids)]

    def all_items(self) -> torch.Tensor:
        """Vectors of every item, ``(num_items, dim)``."""
        parts = []
        if self.id_emb is not None:
            parts.append(self.id_emb.weight * self.known[:, None])
        if self.attr_emb is not None:
            parts.append(self.attr_emb(self.attr_ids, self.attr_offsets) * self.attr_present[:, None])
        if self.text_proj is not None:
            parts.append(self.text_proj(self.text))
        if self.image_proj is not None:
            parts.append(self.image_proj(self.image))
        return torch.stack(parts).sum(0)


class TwoTower(nn.Module):
    def __init__(self, config: RetrieverConfig, feats: ItemFeatures):
        super().__init__()
        self.config = config
        self.items = ItemTower(config, feats)
        self.pos_emb = nn.Embedding(config.max_len, config.dim)
        layer = nn.TransformerEncoderLayer(config.dim, config.heads, dim_feedforward=config.dim,
                                           dropout=config.dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.drop = nn.Dropout(config.dropout)
        self.out_norm = nn.LayerNorm(config.dim)

    def encode(self, seqs: torch.Tensor, item_vecs: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden state at every position: ``seqs`` is ``(B, L)`` item ids, -1 = left padding."""
        item_vecs = self.items.all_items() if item_vecs is None else item_vecs
        pad = seqs < 0
        x = item_vecs[seqs.clamp(min=0)] * (~pad).unsqueeze(-1)
        length = seqs.shape[1]
        x = self.drop(x + self.pos_emb.weight[-length:])
        # causal attention that skips padded keys; every position may attend to itself, so a
        # padded position never has an empty (NaN) attention row
        eye = torch.eye(length, dtype=torch.bool, device=seqs.device)
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=seqs.device), 1)
        blocked = causal[None] | (pad[:, None, :] & ~eye[None])
        blocked = blocked.repeat_interleave(self.config.heads, dim=0)
        h = self.encoder(x, mask=blocked)
        return self.out_norm(h)

    def forward(self, seqs: torch.Tensor) -> torch.Tensor:
        """User vectors ``(B, dim)`` from left-padded sequences ``(B, L)``."""
        return self.encode(seqs)[:, -1]

    def loss(self, seqs: torch.Tensor, targets: torch.Tensor, log_q: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Next-item loss at every non-padded position. ``targets[b, t]`` is the item after
        ``seqs[b, :t+1]`` (-1 = no target).

        The full softmax needs every item's vector; the sampled one computes the vectors of the
        batch's items and its negatives only, so a step costs the same at 10k or 1M items (apart
        from the optimiser's pass over the id embeddings)."""
        if self.config.loss == "full":
            item_vecs = self.items.all_items()
            h = self.encode(seqs, item_vecs)
            valid = targets >= 0
            return F.cross_entropy(h[valid] @ item_vecs.T, targets[valid])
        assert log_q is not None, "sampled softmax needs the log sampling probabilities"
        neg = torch.multinomial(log_q.exp(), self.config.num_negatives, replacement=True, generator=generator)
        valid = targets >= 0
        y = targets[valid]
        vecs, (local_seqs, y_local, neg_local) = self.items.gather(seqs.clamp(min=0), y, neg)
        h = self.encode(torch.where(seqs < 0, -1, local_seqs), vecs)[valid]
        pos_logit = (h * vecs[y_local]).sum(-1, keepdim=True) - log_q[y, None]
        neg_logit = h @ vecs[neg_local].T - log_q[neg][None, :]
        neg_logit = neg_logit.masked_fill(neg[None, :] == y[:, None], float("-inf"))  # accidental hits
        logits = torch.cat([pos_logit, neg_logit], 1)
        return F.cross_entropy(logits, torch.zeros(len(y), dtype=torch.long, device=logits.device))


def left_pad(rows: list[np.ndarray], max_len: int) -> np.ndarray:
    """Last ``max_len`` items of each row, left-padded with -1."""
    out = np.full((len(rows), max_len), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        r = r[-max_len:]
        if len(r):
            out[i, -len(r):] = r
    return out


class TwoTowerTrain(nn.Module):
    """Training wrapper whose ``forward`` returns the loss, so DDP sees the whole computation
    (TorchRec's ``DLRMTrain`` pattern: the model stays a plain scorer)."""

    def __init__(self, model: TwoTower):
        super().__init__()
        self.model = model

    def forward(self, seqs: torch.Tensor, targets: torch.Tensor, log_q: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        return self.model.loss(seqs, targets, log_q, generator)


class RetrieverScorer:
    """A trained retriever for evaluation and serving: ``score(users, history)``; no Ray."""

    def __init__(self, model: TwoTower):
        self.model = model.eval()
        with torch.no_grad():
            self.item_vecs = model.items.all_items()

    @classmethod
    def from_state(cls, config: dict, state: dict[str, dict[str, np.ndarray]]) -> RetrieverScorer:
        """From a model directory's state: components ``weights`` and ``features``."""
        from training.models.state import component

        feats = ItemFeatures.from_arrays(component(state, "features"))
        model = TwoTower(RetrieverConfig(**config), feats)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in component(state, "weights").items()})
        return cls(model)

    def add_items(self, new: ItemFeatures) -> np.ndarray:
        """Items added at runtime get content vectors from the trained item tower; returns them."""
        self.model.items.extend(new)
        with torch.no_grad():
            self.item_vecs = self.model.items.all_items()
        return self.item_vecs[-new.num_items:].numpy()

    @staticmethod
    def state(model: TwoTower, feats: ItemFeatures) -> dict[str, dict[str, np.ndarray]]:
        """The components :meth:`from_state` reads: the weights and the item features."""
        return {"weights": {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()},
                "features": feats.arrays()}

    @torch.no_grad()
    def user_vectors(self, history) -> torch.Tensor:
        rows = [history.row(i) for i in range(history.num_users)]
        seqs = torch.from_numpy(left_pad(rows, self.model.config.max_len)).to(self.item_vecs.device)
        return self.model.encode(seqs, self.item_vecs)[:, -1]

    def score(self, users, history) -> torch.Tensor:
        return self.user_vectors(history) @ self.item_vecs.T
