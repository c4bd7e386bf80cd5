"""The multimodal ranker: scores (user history, candidate) pairs that the retriever proposed.

Plain PyTorch, no Ray. What it adds over the two-tower retriever, which can only take a dot
product of one user vector with one item vector:

* **target attention** of the candidate over the user's history (DIN: Zhou et al., "Deep Interest
  Network for Click-Through Rate Prediction", KDD 2018; BST: Chen et al., "Behavior Sequence
  Transformer for E-commerce Recommendation in Alibaba", DLP-KDD 2019) -- each candidate builds its
  own summary of the history, and the weights say which past items made it score (the *reasons*);
* an MLP over ``[interest, candidate, interest * candidate, dense features]``, where the dense
  features are the retriever's score and rank, the item-kNN co-occurrence score, the candidate's
  log popularity, its price and its recent popularity (interactions in the 30 days before the
  user's last event; 0 where the timestamps are sequence positions, e.g. Amazon: see
  :class:`~training.inference.candidates.CandidateGenerator`) (see :data:`DENSE_FEATURES`);
* the candidate's content -- id, attributes, projected text and image embeddings -- through the
  same :class:`~training.models.retriever.ItemTower` as the retriever (its own weights).

Trained listwise: a softmax cross-entropy over each example's candidate list (the retriever's top
K, i.e. hard negatives, with the true next item in it), as in ListNet (Cao et al., ICML 2007).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.data.funnel import NUM_STAGES, STAGES
from training.models.ranker_config import RankerConfig
from training.models.retriever import ItemFeatures, ItemTower, left_pad

if TYPE_CHECKING:
    from training.models.text_tuning import TunedImage, TunedText

__all__ = ["AUX_HEADS", "DENSE_FEATURES", "Ranker", "RankerConfig", "history_tensor", "listwise_loss", "ranker_loss"]

AUX_HEADS = ("cart", "purchase")
DENSE_FEATURES = ("retriever_score", "retriever_log_rank", "knn_log_score", "log_popularity", "log_price",
                  "log_recent_popularity")


def _call(module: nn.Module | None, items: torch.Tensor) -> torch.Tensor:
    """A fine-tuned encoder over ``items``; the ranker has one whenever it has its projection."""
    if module is None:
        raise RuntimeError("the ranker has a fine-tuned projection but neither its encoder nor its table")
    return module(items)


class Ranker(nn.Module):
    """``tuned_text``: a :class:`~training.models.text_tuning.TunedText` whose top layers train with
    the ranker (``text_tune_layers > 0``); ``tuned_table``: its output for every item, frozen (an
    exported model). Either adds a fine-tuned text vector to each *candidate*; history items keep
    the frozen text features (running the encoder over every history item too would multiply the
    cost per step by the history length)."""

    tuned_table: torch.Tensor | None
    tuned_image_table: torch.Tensor | None

    def __init__(self, config: RankerConfig, feats: ItemFeatures, tuned_text: TunedText | None = None,
                 tuned_table: np.ndarray | None = None, tuned_image: TunedImage | None = None,
                 tuned_image_table: np.ndarray | None = None):
        super().__init__()
        d = config.dim
        self.config = config
        self.items = ItemTower(config, feats)
        self.tuned = tuned_text
        if tuned_table is not None:
            self.register_buffer("tuned_table", torch.from_numpy(tuned_table.astype(np.float32)))
        else:
            self.tuned_table = None
        width = tuned_text.dim if tuned_text is not None else (tuned_table.shape[1] if tuned_table is not None else 0)
        self.tuned_proj = nn.Linear(width, d) if width else None
        # the same for images (``image_tune_layers``; see models/text_tuning.py:TunedImage)
        self.tuned_image = tuned_image
        if tuned_image_table is not None:
            self.register_buffer("tuned_image_table", torch.from_numpy(tuned_image_table.astype(np.float32)))
        else:
            self.tuned_image_table = None
        width = tuned_image.dim if tuned_image is not None else (
            tuned_image_table.shape[1] if tuned_image_table is not None else 0)
        self.tuned_image_proj = nn.Linear(width, d) if width else None
        self.pos_emb = nn.Embedding(config.max_len, d)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        self.stage_emb = self.aux = None
        if config.use_stage:
            self.stage_emb = nn.Embedding(NUM_STAGES, d)
            nn.init.normal_(self.stage_emb.weight, std=0.02)
            self.aux = nn.Linear(config.hidden // 2, len(AUX_HEADS))
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)
        n_dense = len(DENSE_FEATURES)
        self.dense_norm = nn.BatchNorm1d(n_dense)
        self.mlp = nn.Sequential(nn.Linear(3 * d + n_dense, config.hidden), nn.ReLU(), nn.Dropout(config.dropout),
                                 nn.Linear(config.hidden, config.hidden // 2), nn.ReLU(),
                                 nn.Linear(config.hidden // 2, 1))
        # the retriever score alone is a good ranking: a linear skip path starts the model there
        self.skip = nn.Linear(n_dense, 1)

    def forward(self, history: torch.Tensor, cands: torch.Tensor, dense: torch.Tensor,
                hist_stage: torch.Tensor | None = None, return_all: bool = False):
        """``history`` (B, L) item ids (-1 = left padding), ``cands`` (B, C) item ids, ``dense``
        (B, C, F), ``hist_stage`` (B, L) funnel stage of each history item (``use_stage``) ->
        ranking logits (B, C); with ``return_all``, also the attention weights (B, C, L) over the
        history and the cart/purchase logits (B, C, 2) (``None`` without ``use_stage``)."""
        # the vectors of this batch's items only (not the whole catalogue's: 0.5 s a request at 1M items)
        vecs, (hist_local, cand_local) = self.items.gather(history.clamp(min=0), cands)
        pad = history < 0
        h = vecs[hist_local] + self.pos_emb.weight[-history.shape[1]:]
        if self.stage_emb is not None and hist_stage is not None:
            h = h + self.stage_emb(hist_stage)
        h = self.norm(h)
        c = vecs[cand_local]
        if self.tuned_proj is not None or self.tuned_image_proj is not None:
            uniq, inverse = torch.unique(cands, return_inverse=True)
            if self.tuned_proj is not None:
                text = self.tuned_table[uniq] if self.tuned_table is not None else _call(self.tuned, uniq)
                c = c + self.tuned_proj(text)[inverse]
            if self.tuned_image_proj is not None:
                image = (self.tuned_image_table[uniq] if self.tuned_image_table is not None
                         else _call(self.tuned_image, uniq))
                c = c + self.tuned_image_proj(image)[inverse]
        c = self.norm(c)
        att = (self.q(c) @ self.k(h).transpose(1, 2)) / math.sqrt(self.config.dim)  # (B, C, L)
        att = att.masked_fill(pad[:, None, :], float("-inf"))
        empty = pad.all(1)  # no history at all (anonymous user): attend to nothing
        weights = torch.softmax(att.masked_fill(empty[:, None, None], 0.0), dim=-1) * (~empty)[:, None, None]
        interest = weights @ self.v(h)  # (B, C, d)
        b, n, f = dense.shape
        z = self.dense_norm(dense.reshape(b * n, f)).reshape(b, n, f)
        x = torch.cat([interest, c, interest * c, z], dim=-1)
        top = self.mlp[:-1](x)
        logits = self.mlp[-1](top).squeeze(-1) + self.skip(z).squeeze(-1)
        if not return_all:
            return logits
        return logits, weights, (self.aux(top) if self.aux is not None else None)

    def loss(self, history: torch.Tensor, cands: torch.Tensor, dense: torch.Tensor, labels: torch.Tensor,
             hist_stage: torch.Tensor | None = None, cand_stage: torch.Tensor | None = None):
        logits, _, aux = self(history, cands.clamp(min=0), dense, hist_stage, return_all=True)
        return ranker_loss(self.config, logits, aux, cands, labels, cand_stage)


def ranker_loss(config: RankerConfig, logits: torch.Tensor, aux: torch.Tensor | None, cands: torch.Tensor,
                labels: torch.Tensor, cand_stage: torch.Tensor | None, weight: torch.Tensor | None = None) -> torch.Tensor:
    """The listwise ranking loss (each list weighted by ``weight``, default 1), plus ``aux_weight`` x
    the cart/purchase heads' binary cross-entropy on the true items (did the user go on to cart /
    buy the item they took up)."""
    loss = listwise_loss(logits, cands, labels, weight)
    if aux is not None and cand_stage is not None:
        pos = labels.bool() & (cands >= 0)
        if pos.any():
            stage = cand_stage[pos]
            target = torch.stack([stage >= STAGES["cart"], stage >= STAGES["purchase"]], -1).to(aux.dtype)
            loss = loss + config.aux_weight * F.binary_cross_entropy_with_logits(aux[pos].float(), target.float())
    return loss


def listwise_loss(logits: torch.Tensor, cands: torch.Tensor, labels: torch.Tensor,
                  weight: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax cross-entropy over each candidate list (``cands`` -1 = no candidate); ``labels``
    (B, C) marks the true items -- with several (a basket) the loss is minus the log of their total
    probability. ``weight`` (B,): each list's weight in the batch mean (position debiasing of
    :mod:`training.data.exposure`)."""
    logits = logits.float().masked_fill(cands < 0, -torch.inf)
    pos = logits.masked_fill(~labels.bool(), -torch.inf)
    per_list = torch.logsumexp(logits, 1) - torch.logsumexp(pos, 1)
    if weight is None:
        return per_list.mean()
    return (per_list * weight).sum() / weight.sum().clamp(min=1e-12)


def history_tensor(rows: list[np.ndarray], max_len: int) -> torch.Tensor:
    return torch.from_numpy(left_pad(rows, max_len))
