"""Retrieve-then-rank as one object: what ``raycart evaluate`` scores and what serving calls.

:class:`TwoStageScorer` = :class:`~training.candidates.CandidateStage` (retriever top-K + dense
features) followed by the :class:`~training.models.ranker.Ranker`. A ranker model directory
embeds the retriever it reranks (its weights and item features), the item-kNN model and the
item statistics, so it loads on its own, without Ray; ``model.json`` records the retriever's
path and metrics.
"""

from __future__ import annotations

import numpy as np
import torch

from training.baselines.itemknn import ItemKNN
from training.candidates import Candidates, CandidateStage
from training.data.interactions import Interactions
from training.models.ranker import Ranker, RankerConfig, history_tensor
from training.models.retriever import ItemFeatures, RetrieverScorer


class TwoStageScorer:
    def __init__(self, stage: CandidateStage, ranker: Ranker, attribute_vocab: list[str] | None = None):
        self.stage, self.ranker = stage, ranker.eval()
        self.k = ranker.config.eval_candidates
        self.vocab = attribute_vocab or []
        feats = ranker.items
        self._attr = None
        if hasattr(feats, "attr_ids"):
            indptr = np.r_[feats.attr_offsets.numpy(), len(feats.attr_ids)]
            self._attr = (indptr, feats.attr_ids.numpy())

    @torch.no_grad()
    def rank(self, history: Interactions, cands: Candidates) -> tuple[torch.Tensor, torch.Tensor]:
        """Ranker logits (N, K) for the candidate lists (-inf where there is no candidate) and the
        attention weights (N, K, L) over each history."""
        hist = history_tensor([history.row(u) for u in range(history.num_users)], self.ranker.config.max_len)
        items = torch.from_numpy(cands.items)
        logits, att = self.ranker(hist, items.clamp(min=0), torch.from_numpy(cands.dense), return_attention=True)
        return logits.masked_fill(items < 0, -torch.inf), att

    def score(self, users, history: Interactions) -> torch.Tensor:
        """Full-catalogue scores for the evaluation harness: ranker logits on the retriever's top K,
        -inf elsewhere (so the two-stage pipeline is evaluated exactly like any other model)."""
        cands = self.stage.generate(history, self.k)
        logits, _ = self.rank(history, cands)
        out = torch.full((history.num_users, self.stage.retriever.item_vecs.shape[0]), -torch.inf)
        items = torch.from_numpy(cands.items)
        ok = items >= 0
        rows = torch.arange(history.num_users)[:, None].expand_as(items)
        out[rows[ok], items[ok]] = logits[ok]
        return out

    def recommend(self, history: Interactions, n: int = 10) -> list[list[dict]]:
        """Top ``n`` per history row: ``{"item", "score", "retriever_rank", "reason"}``; the reason
        names the history item the candidate attended to most and the attributes they share."""
        cands = self.stage.generate(history, self.k)
        logits, att = self.rank(history, cands)
        out = []
        for u in range(history.num_users):
            order = torch.argsort(logits[u], descending=True, stable=True)[:n]
            row = history.row(u)[-self.ranker.config.max_len:]
            recs = []
            for j in order.tolist():
                if cands.items[u, j] < 0:
                    break
                recs.append({"item": int(cands.items[u, j]), "score": float(logits[u, j]),
                             "retriever_rank": j, "reason": self._reason(int(cands.items[u, j]), row, att[u, j])})
            out.append(recs)
        return out

    def _reason(self, item: int, row: np.ndarray, weights: torch.Tensor) -> dict:
        if len(row) == 0:
            return {"because_of": None, "weight": 0.0, "shared": []}
        w = weights[-len(row):]
        pos = int(torch.argmax(w))
        source = int(row[pos])
        return {"because_of": source, "weight": round(float(w[pos]), 4), "shared": self._shared(item, source)}

    def _shared(self, a: int, b: int) -> list[str]:
        if self._attr is None:
            return []
        indptr, ids = self._attr
        common = np.intersect1d(ids[indptr[a]:indptr[a + 1]], ids[indptr[b]:indptr[b + 1]])
        return [self.vocab[i] if i < len(self.vocab) else str(i) for i in common.tolist()]

    # -- model directory -------------------------------------------------------------------------

    @staticmethod
    def state(stage: CandidateStage, ranker: Ranker, feats: ItemFeatures,
              retriever_state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Everything :meth:`from_state` needs; ``retriever_state`` is the retriever directory's
        ``state.npz`` content, embedded as is."""
        out = {f"r/{k}": v for k, v in retriever_state.items()}
        out.update({f"k/{k}": v for k, v in stage.knn.state()[1].items()})
        out.update({f"w/{k}": v.detach().cpu().numpy() for k, v in ranker.state_dict().items()})
        out.update({f"f/{k}": v for k, v in feats.arrays().items()})
        out["x/log_pop"], out["x/log_price"] = stage.log_pop, stage.log_price
        return out

    @classmethod
    def from_state(cls, config: dict, state: dict[str, np.ndarray]) -> TwoStageScorer:
        retriever = RetrieverScorer.from_state(config["retriever"], {k[2:]: v for k, v in state.items()
                                                                     if k.startswith("r/")})
        knn = ItemKNN.from_state(config["knn"], {k[2:]: v for k, v in state.items() if k.startswith("k/")})
        stage = CandidateStage(retriever, knn, np.zeros(1), np.zeros(1))
        stage.log_pop, stage.log_price = state["x/log_pop"], state["x/log_price"]
        feats = ItemFeatures.from_arrays({k[2:]: v for k, v in state.items() if k.startswith("f/")})
        ranker = Ranker(RankerConfig(**config["ranker"]), feats, tuned_table=state.get("w/tuned_table"))
        ranker.load_state_dict({k[2:]: torch.from_numpy(v) for k, v in state.items() if k.startswith("w/")},
                               strict=False)
        return cls(stage, ranker, config.get("attribute_vocab"))
