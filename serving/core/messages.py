"""Typed messages between the parts of the request path (:mod:`serving.core.service`).

Whatever carries them -- a method call in one process, a Serve ``DeploymentHandle`` call between
replicas -- the parts exchange these dataclasses: numpy arrays for the per-candidate numbers (one
pickled buffer each, not a list of dicts), plain Python for the rest. Internal item ids
(``0..num_items``) throughout; external ids exist only at the HTTP edge.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from serving.core.schemas import PolicyInputs


@dataclass(frozen=True)
class CandidateQuery:
    """The retriever's input: a history (oldest first; ``times`` in microseconds, -1 = "now"),
    the runtime items the answer must know (``items_version``) and the shopper's real-time inputs."""

    history: np.ndarray  # (L,) int64
    times: np.ndarray | None = None  # (L,) int64
    items_version: int = 0
    live: PolicyInputs = field(default_factory=PolicyInputs)
    # retrieve with this model version if the replica still holds it (a rollout: the ranker that
    # will rank the candidates holds only that one); None or not held: the replica's current model
    model_version: str | None = None


@dataclass(frozen=True)
class CandidateSet:
    """The retriever's answer: candidates best first, their ranker features, the policy's per-item
    columns and the item vectors; ``explore_from``: candidates from there on are exploration draws."""

    items: np.ndarray  # (K,) int64, -1 = none
    dense: np.ndarray  # (K, F) float32
    policy: np.ndarray  # (K, P) float
    vectors: np.ndarray  # (K, D) float32
    explore_from: int
    model_version: str = ""  # the model that retrieved them: the ranker must rank with the same one


@dataclass(frozen=True)
class RankQuery:
    """The ranker's input for one request (``user``: a known user's internal id, for the event
    types of its stored history; ``live_stages``: item -> funnel stage of events since training)."""

    history: np.ndarray  # (L,) int64
    items: np.ndarray  # (K,) int64
    dense: np.ndarray  # (K, F) float32
    user: int | None = None
    items_version: int = 0
    live_stages: dict[int, int] = field(default_factory=dict)
    model_version: str | None = None  # the model that retrieved ``items`` (None: the current one)


@dataclass(frozen=True)
class RankedList:
    """The ranker's answer: ``order`` indexes the query's candidates best first (real candidates
    only), with their scores, cart/purchase probabilities (when the model has those heads) and
    the reason each is shown (``because_of``: a history item id or None; ``shared`` attributes)."""

    model_version: str
    order: np.ndarray  # (n,) int64 indices into the query's items
    scores: np.ndarray  # (n,) float
    reasons: list[dict]
    p_cart: np.ndarray | None = None
    p_purchase: np.ndarray | None = None


class ModelVersionMismatch(RuntimeError):
    """A replica was asked to rank (or retrieve) with a model version it does not hold -- a
    rollout is under way and the two steps of one request met different versions. ``held``:
    the versions it holds, newest first, so the caller can retrieve again with one of them.
    (Its args are its constructor's, so it pickles across Ray and keeps its type there.)"""

    def __init__(self, wanted: str, held: tuple[str, ...]):
        super().__init__(wanted, held)
        self.wanted, self.held = wanted, held

    def __str__(self) -> str:
        return f"model version {self.wanted!r} is not held here (held: {', '.join(self.held) or 'none'})"


class DependencyUnavailable(RuntimeError):
    """A model replica could not get what a request needs in time (the item registry did not
    answer, say, while it restarts): the request may be retried (HTTP 503)."""


@dataclass(frozen=True, kw_only=True)
class PolicyQuery:
    """The policy's input: the kept candidates (``scores``, ``retriever_rank`` of each), their
    per-item columns and vectors, the request context and the slate size; ``epsilon``,
    ``explore_pool`` and ``diversity`` (the MMR weight; None: the policy's own) set exploration
    for one request (harder for a shopper who stopped engaging)."""

    request_id: str
    item_ids: list[str]
    scores: np.ndarray
    retriever_rank: np.ndarray
    context: dict
    k: int
    features: np.ndarray | None = None
    vectors: np.ndarray | None = None
    p_cart: np.ndarray | None = None
    p_purchase: np.ndarray | None = None
    epsilon: float | None = None
    explore_pool: np.ndarray | None = None
    diversity: float | None = None

    def items(self) -> list[dict]:
        """The bandit's per-item view (:meth:`training.models.bandit.LinUCBPolicy.features`)."""
        out = []
        for j in range(len(self.item_ids)):
            row = {"score": float(self.scores[j]), "retriever_rank": int(self.retriever_rank[j])}
            if self.p_cart is not None:
                row["p_cart"] = float(self.p_cart[j])
            if self.p_purchase is not None:
                row["p_purchase"] = float(self.p_purchase[j])
            out.append(row)
        return out


@dataclass(frozen=True)
class SlotChoice:
    index: int  # into the query's items
    position: int
    propensity: float
    greedy: bool


@dataclass(frozen=True)
class Slate:
    policy_version: str
    slots: list[SlotChoice]


@dataclass(frozen=True)
class PolicyParams:
    """A copy of the policy's parameters (``A^-1`` and the ridge solution ``theta``) that Ingress
    replicas choose with when ``AppArgs.policy_copy_s`` > 0; ``version`` names them in the log."""

    version: str
    inverse: np.ndarray
    theta: np.ndarray

