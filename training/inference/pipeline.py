"""Retrieve-then-rank as one object: what ``raycart evaluate`` scores and what serving calls.

:class:`Pipeline` = :class:`~training.inference.candidates.CandidateGenerator` (retriever top-K + dense
features) followed by the :class:`~training.models.ranker.Ranker`. A ranker model directory
embeds the retriever it reranks (its weights and item features), the item-kNN model and the
item statistics, so it loads on its own, without Ray; ``model.json`` records the retriever's
path and metrics.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from training.baselines.itemknn import ItemKNN
from training.data.funnel import lookup
from training.data.interactions import Interactions
from training.inference.candidates import CandidateGenerator, Candidates, catalogue_scores
from training.models.ranker import AUX_HEADS, Ranker, RankerConfig, history_tensor
from training.models.retriever import ItemFeatures, RetrieverScorer, left_pad
from training.models.state import ModelState, component


class Pipeline:
    """``stages``: the funnel-stage map (:mod:`training.data.funnel`) that gives the event-type
    feature of a known user's history items, for rankers trained with ``use_stage``."""

    def __init__(self, generator: CandidateGenerator, ranker: Ranker, attribute_vocab: list[str] | None = None,
                 stages: sp.csr_matrix | None = None):
        self.generator, self.ranker = generator, ranker.eval()
        self.stages = stages if ranker.config.use_stage else None
        self.k = ranker.config.eval_candidates
        self.vocab = attribute_vocab or []
        self._attr = self._attribute_lists()

    def _attribute_lists(self) -> tuple[np.ndarray, np.ndarray] | None:
        """CSR attribute ids per item, from the ranker's item tower (for the reasons)."""
        tower = self.ranker.items
        if not hasattr(tower, "attr_ids"):
            return None
        return np.r_[tower.attr_offsets.numpy(), len(tower.attr_ids)], tower.attr_ids.numpy()

    def add_items(self, new: ItemFeatures, prices: np.ndarray) -> np.ndarray:
        """Items added at runtime (ids ``num_items..``, content only): both stages learn their
        content vectors from their trained item towers, so they can be retrieved and ranked
        without a retrain. Returns their retriever vectors (for a vector index)."""
        vecs = self.generator.add_items(new, prices)
        self.ranker.items.extend(new)
        for name in ("tuned_table", "tuned_image_table"):  # fine-tuned content: unknown -> zeros
            table = getattr(self.ranker, name)
            if table is not None:
                setattr(self.ranker, name, torch.cat([table, torch.zeros(new.num_items, table.shape[1])]))
        self._attr = self._attribute_lists()
        if self.stages is not None:
            self.stages.resize((self.stages.shape[0], self.stages.shape[1] + new.num_items))
        return vecs

    @property
    def num_items(self) -> int:
        return self.generator.retriever.item_vecs.shape[0]

    def content_dims(self) -> tuple[int | None, int | None]:
        """Widths of the text and image features the item towers read (None: not used)."""
        towers = (self.generator.retriever.model.items, self.ranker.items)
        dims = []
        for name in ("text", "image"):
            used = [getattr(t, name).shape[1] for t in towers if getattr(t, f"{name}_proj") is not None]
            dims.append(used[0] if used else None)
        return dims[0], dims[1]

    def history_stages(self, users, history: Interactions) -> torch.Tensor | None:
        if self.stages is None or users is None:
            return None
        padded = left_pad([history.row(u) for u in range(history.num_users)], self.ranker.config.max_len)
        return torch.from_numpy(lookup(self.stages, np.asarray(users), padded))

    @torch.no_grad()
    def rank(self, history: Interactions, cands: Candidates, hist_stage: torch.Tensor | None = None):
        """Ranker logits (N, K) for the candidate lists (-inf where there is no candidate), the
        attention weights (N, K, L) over each history and the cart/purchase logits (or ``None``)."""
        hist = history_tensor([history.row(u) for u in range(history.num_users)], self.ranker.config.max_len)
        items = torch.from_numpy(cands.items)
        logits, att, aux = self.ranker(hist, items.clamp(min=0), torch.from_numpy(cands.dense), hist_stage,
                                       return_all=True)
        return logits.masked_fill(items < 0, -torch.inf), att, aux

    def score(self, users, history: Interactions) -> torch.Tensor:
        """Full-catalogue scores for the evaluation harness: ranker logits on the retriever's top K,
        -inf elsewhere (so the two-stage pipeline is evaluated exactly like any other model)."""
        cands = self.generator.generate(history, self.k)
        logits, _, _ = self.rank(history, cands, self.history_stages(users, history))
        return catalogue_scores(cands.items, logits, self.generator.retriever.item_vecs.shape[0])

    def recommend(self, history: Interactions, n: int = 10, users=None,
                  hist_stage: torch.Tensor | None = None) -> list[list[dict]]:
        """Top ``n`` per history row: ``{"item", "score", "retriever_rank", "reason"}`` (+
        ``p_cart``/``p_purchase`` from the multi-task heads); the reason names the history item the
        candidate attended to most and the attributes they share. ``users`` (known user ids) look
        the history's event types up in the stage map; ``hist_stage`` passes them directly."""
        cands = self.generator.generate(history, self.k)
        if hist_stage is None:
            hist_stage = self.history_stages(users, history)
        return self.ranked_lists(history, cands, hist_stage, n)

    def ranked_lists(self, history: Interactions, cands: Candidates, hist_stage: torch.Tensor | None = None,
                     n: int | None = None) -> list[list[dict]]:
        """Rank precomputed candidate lists (e.g. from a separate retriever service); see
        :meth:`recommend` for what each item carries. ``n=None`` keeps every candidate."""
        logits, att, aux = self.rank(history, cands, hist_stage)
        probs = torch.sigmoid(aux) if aux is not None else None
        out = []
        for u in range(history.num_users):
            order = torch.argsort(logits[u], descending=True, stable=True)
            order = order[:n] if n is not None else order
            row = history.row(u)[-self.ranker.config.max_len:]
            recs = []
            for j in order.tolist():
                if cands.items[u, j] < 0:
                    break
                rec = {"item": int(cands.items[u, j]), "score": float(logits[u, j]), "retriever_rank": j,
                       "reason": self._reason(int(cands.items[u, j]), row, att[u, j])}
                if probs is not None:
                    rec.update({f"p_{head}": round(float(probs[u, j, h]), 4) for h, head in enumerate(AUX_HEADS)})
                recs.append(rec)
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
    def state(generator: CandidateGenerator, ranker: Ranker, retriever_state: ModelState,
              stages: sp.csr_matrix | None = None) -> ModelState:
        """Everything :meth:`from_state` needs; ``retriever_state`` is the retriever directory's
        ``state.npz`` content, embedded as is (the ranker reads the same item features from it)."""
        out = {"retriever_weights": retriever_state["weights"], "item_features": retriever_state["features"],
               "knn": generator.knn.arrays(),
               "ranker_weights": {k: v.detach().cpu().numpy() for k, v in ranker.state_dict().items()},
               "candidate_stage": generator.arrays()}
        if stages is not None and ranker.config.use_stage:
            out["funnel_stages"] = {"data": stages.data, "indices": stages.indices, "indptr": stages.indptr,
                                    "shape": np.asarray(stages.shape, dtype=np.int64)}
        return out

    @classmethod
    def from_state(cls, config: dict, state: ModelState) -> Pipeline:
        features = component(state, "item_features")
        retriever = RetrieverScorer.from_state(config["retriever"], {"weights": component(state, "retriever_weights"),
                                                                     "features": features})
        knn = ItemKNN.from_arrays(config["knn"], component(state, "knn"))
        x = component(state, "candidate_stage")
        generator = CandidateGenerator(retriever, knn, x["log_pop"], x["log_price"], x["event_keys"], int(x["time_origin"]),
                               CandidateGenerator.recent_days_of(x))
        weights = component(state, "ranker_weights")
        ranker = Ranker(RankerConfig(**config["ranker"]), ItemFeatures.from_arrays(features),
                        tuned_table=weights.get("tuned_table"), tuned_image_table=weights.get("tuned_image_table"))
        ranker.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
        stages = None
        if "funnel_stages" in state:
            csr = state["funnel_stages"]
            stages = sp.csr_matrix((csr["data"], csr["indices"], csr["indptr"]), shape=tuple(csr["shape"]))
        return cls(generator, ranker, config.get("attribute_vocab"), stages)
