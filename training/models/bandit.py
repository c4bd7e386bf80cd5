"""The policy that turns a ranked candidate list into the slate a user sees, and learns from clicks.

A **LinUCB** contextual bandit with shared parameters (Li et al., "A Contextual-Bandit Approach to
Personalized News Article Recommendation", WWW 2010, the hybrid/shared-feature form), with an
**epsilon floor**: each slot of the slate is filled, with probability ``1 - epsilon``, by the
remaining item of highest upper confidence bound and otherwise by a uniformly random remaining
item. Because the greedy choice is deterministic given the state, the probability that the policy
showed an item in its slot -- its **propensity** -- is exact:
``(1 - epsilon) * [item is the greedy choice] + epsilon / remaining``. Logged propensities make the
feedback usable for off-policy evaluation (inverse propensity scoring) of other policies later.

Features of a (request, item) pair: the ranker's score standardised within the list, the
retriever rank (log), the multi-task heads' P(cart)/P(purchase) when present, a bias, the
request's context (hashed one-hot buckets of ``context`` key=value pairs) crossed with the
ranker score, and -- with ``item_features`` -- per-item columns the caller supplies. Serving
passes the **user and item vectors** there: how close the item is to what the shopper engaged
with since the models were trained, the cosine of user and item vector, and their elementwise
product, so one shared linear model over ``user x item`` learns which items shoppers respond to
(the hybrid linear model of Li et al. 2010 over learned embeddings, i.e. a neural-linear bandit:
Riquelme, Tucker & Snoek, "Deep Bayesian Bandits Showdown", ICLR 2018). The prior mean puts
weight ``prior_score`` on the ranker score, so an untrained policy follows the ranker instead of
exploring by feature norm. Plain numpy, no Ray; randomness comes from an injected
``np.random.Generator``.

>>> pol = LinUCBPolicy(PolicyConfig.tiny(), np.random.default_rng(0))
>>> slate = pol.choose([{"score": 2.0}, {"score": 1.0}, {"score": 0.5}], {"device": "web"}, k=2)
>>> [s.position for s in slate], all(0 < s.propensity <= 1 for s in slate)
([0, 1], True)
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from dataclasses import dataclass

import numpy as np

REWARDS = {"view": 0.0, "click": 1.0, "cart": 2.0, "purchase": 5.0}


@dataclass(frozen=True)
class PolicyConfig:
    epsilon: float = 0.05  # exploration floor per slot
    alpha: float = 0.5  # width of the confidence bonus
    ridge: float = 1.0  # prior precision of the linear model
    context_buckets: int = 32  # hashed one-hot buckets for the request context
    item_features: int = 0  # per-item columns passed to ``choose`` (user/item vectors in serving)
    prior_score: float = 1.0  # prior mean weight of the standardised ranker score
    # prior mean weights of the first item-feature columns (serving: recent-click similarity, the
    # shopper's recent click rate near the item, novelty -- see user_item_features)
    prior_item: tuple[float, ...] = ()
    # slate diversity (maximal marginal relevance, Carbonell & Goldstein, SIGIR 1998): the greedy
    # choice for a slot is the best UCB minus ``diversity`` x the largest cosine to the items
    # already in the slate (needs item vectors); still deterministic, so propensities stay exact
    diversity: float = 0.0
    seed: int = 0

    def __post_init__(self):
        if not 0 <= self.epsilon <= 1:
            raise ValueError(f"epsilon must be in [0, 1], got {self.epsilon}")
        if self.alpha < 0 or self.ridge <= 0 or self.context_buckets < 1 or self.item_features < 0:
            raise ValueError("alpha must be >= 0, ridge > 0, context_buckets >= 1 and item_features >= 0")

    @classmethod
    def tiny(cls) -> PolicyConfig:
        return cls(epsilon=0.1, context_buckets=8)

    @property
    def dim(self) -> int:
        return 5 + self.context_buckets + self.item_features


@dataclass(frozen=True)
class Shown:
    index: int  # index of the item in the candidate list passed to ``choose``
    position: int  # slot in the slate, 0 = top
    propensity: float  # probability that the policy put this item in this slot
    greedy: bool  # the UCB choice (else an exploration draw)
    features: np.ndarray  # what the policy saw (a float32 copy): the update uses the same vector


def _bucket(key: str, buckets: int) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=4).digest(), "little") % buckets


class LinUCBPolicy:
    def __init__(self, config: PolicyConfig, rng: np.random.Generator):
        self.config, self.rng = config, rng
        d = config.dim
        self.A = np.eye(d) * config.ridge  # precision matrix
        self.b = np.zeros(d)
        self.updates = 0
        self.prior = np.zeros(d)  # prior mean of the weights (times ``ridge``: a pseudo-observation)
        self.prior[1] = config.prior_score
        first = 5 + config.context_buckets
        self.prior[first:first + len(config.prior_item)] = config.prior_item[:config.item_features]
        self._solved: tuple[np.ndarray, np.ndarray] | None = None  # (A^-1, theta) until the next update

    # -- features ------------------------------------------------------------------------------

    def features(self, items: list[dict], context: dict | None, item_features: np.ndarray | None = None) -> np.ndarray:
        """``(len(items), dim)``: per item ``score`` (ranker logit), optional ``retriever_rank``,
        ``p_cart``, ``p_purchase``; the context crossed with the standardised score; then
        ``item_features`` (``(len(items), config.item_features)``, zeros when not given)."""
        cfg = self.config
        scores = np.array([float(it.get("score", 0.0)) for it in items])
        z = (scores - scores.mean()) / (scores.std() + 1e-6) if len(scores) > 1 else np.zeros_like(scores)
        x = np.zeros((len(items), cfg.dim))
        x[:, 0] = 1.0
        x[:, 1] = z
        x[:, 2] = [np.log1p(float(it.get("retriever_rank", 0))) for it in items]
        x[:, 3] = [float(it.get("p_cart", 0.0)) for it in items]
        x[:, 4] = [float(it.get("p_purchase", 0.0)) for it in items]
        for key, value in sorted((context or {}).items()):
            x[:, 5 + _bucket(f"{key}={value}", cfg.context_buckets)] += z
        if cfg.item_features and item_features is not None:
            f = np.asarray(item_features, dtype=np.float64)
            if f.shape != (len(items), cfg.item_features):
                raise ValueError(f"item_features: expected shape {(len(items), cfg.item_features)}, got {f.shape}")
            x[:, 5 + cfg.context_buckets:] = f
        return x

    def _solve(self) -> tuple[np.ndarray, np.ndarray]:
        if self._solved is None:
            inv = np.linalg.inv(self.A)
            self._solved = inv, inv @ (self.b + self.config.ridge * self.prior)
        return self._solved

    def solution(self) -> tuple[np.ndarray, np.ndarray]:
        """``(A^-1, theta)``: all :meth:`choose` needs (copies, for another process to choose with)."""
        inv, theta = self._solve()
        return inv.copy(), theta.copy()

    def use_solution(self, inverse: np.ndarray, theta: np.ndarray) -> None:
        """Choose with another copy's :meth:`solution` (until this copy's next :meth:`update`)."""
        if inverse.shape != (self.config.dim, self.config.dim) or theta.shape != (self.config.dim,):
            raise ValueError(f"policy solution of shape {inverse.shape}/{theta.shape}, not dim {self.config.dim}")
        self._solved = inverse, theta

    def ucb(self, x: np.ndarray) -> np.ndarray:
        inv, theta = self._solve()
        return x @ theta + self.config.alpha * np.sqrt(np.einsum("ij,jk,ik->i", x, inv, x).clip(min=0.0))

    # -- acting and learning -------------------------------------------------------------------

    def choose(self, items: list[dict], context: dict | None, k: int,
               item_features: np.ndarray | None = None, item_vectors: np.ndarray | None = None,
               epsilon: float | None = None, explore_pool: np.ndarray | None = None,
               diversity: float | None = None) -> list[Shown]:
        """Fill ``min(k, len(items))`` slots; see the module docstring for the propensities.
        ``item_vectors`` (``(len(items), d)``) enable the ``diversity`` term. ``epsilon``
        overrides the configured floor for this request, and an exploration draw then picks
        uniformly among the remaining items of ``explore_pool`` (a boolean mask; all remaining
        items when none of the pool is left). Either way each logged propensity is the exact
        probability ``(1 - eps) [greedy] + eps [in the draw's set] / |that set|``. ``diversity``
        overrides the configured MMR weight for this request; with it (and ``item_vectors``) an
        exploration draw after the first slot is among the half of its set least like the slate so
        far (a deterministic set given the slots before, so the propensities stay exact), which
        spreads a search over more parts of the catalogue."""
        eps = self.config.epsilon if epsilon is None else float(epsilon)
        mmr = self.config.diversity if diversity is None else float(diversity)
        if mmr < 0:
            raise ValueError(f"diversity must be >= 0, got {mmr}")
        if not 0 <= eps <= 1:
            raise ValueError(f"epsilon must be in [0, 1], got {eps}")
        pool = np.zeros(len(items), dtype=bool) if explore_pool is None else np.asarray(explore_pool, dtype=bool)
        x = self.features(items, context, item_features)
        u = self.ucb(x) if len(items) else np.zeros(0)
        remaining = list(range(len(items)))
        out = []
        diverse = mmr > 0 and item_vectors is not None and len(items) > 0
        if diverse:
            v = np.asarray(item_vectors, dtype=np.float64)
            v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-9)
            closest = np.full(len(items), -np.inf)  # largest cosine to the slate so far
        for pos in range(min(k, len(items))):
            score = u - mmr * np.maximum(closest, 0.0) if diverse and pos else u
            greedy = max(remaining, key=lambda i: (score[i], -i))  # ties: earlier (better-ranked) item
            draw_from = [i for i in remaining if pool[i]] or remaining
            if diverse and pos and len(draw_from) > 1:  # explore away from the slate so far: the less similar half
                near = closest[draw_from]
                middle = np.median(near)
                draw_from = [i for i, c in zip(draw_from, near) if c <= middle]
            explore = self.rng.random() < eps
            pick = draw_from[int(self.rng.integers(len(draw_from)))] if explore else greedy
            prop = (1 - eps) * (pick == greedy) + (eps / len(draw_from) if pick in draw_from else 0.0)
            # a copy, not a view: a pending request must not keep the whole feature matrix alive
            out.append(Shown(pick, pos, float(prop), pick == greedy, x[pick].astype(np.float32)))
            remaining.remove(pick)
            if diverse:
                closest = np.maximum(closest, v @ v[pick])
        return out

    def update(self, features: np.ndarray, reward: float, count_as_new: bool = True) -> None:
        """One observation. An item shown and never clicked is an observation with reward 0; a
        later click on it only adds its reward (``count_as_new=False``): together, exactly one
        observation with that reward."""
        x = np.asarray(features, dtype=np.float64)
        if count_as_new:
            self.A += np.outer(x, x)
        self.b += reward * x
        self.updates += 1
        self._solved = None

    def observe_impression(self, shown: list[Shown]) -> None:
        for s in shown:
            self.update(s.features, 0.0)

    def observe_feedback(self, features: np.ndarray, event: str) -> None:
        if event not in REWARDS:
            raise ValueError(f"unknown event {event!r}; expected one of {sorted(REWARDS)}")
        self.update(features, REWARDS[event], count_as_new=False)

    # -- state ---------------------------------------------------------------------------------

    def state_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, A=self.A, b=self.b, updates=np.int64(self.updates),
                 config=np.frombuffer(repr(dataclasses.asdict(self.config)).encode(), dtype=np.uint8),
                 rng=np.frombuffer(repr(self.rng.bit_generator.state).encode(), dtype=np.uint8))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, config: PolicyConfig) -> LinUCBPolicy:
        import ast

        with np.load(io.BytesIO(data)) as z:
            saved = ast.literal_eval(bytes(z["config"]).decode())
            if saved != dataclasses.asdict(config):
                raise ValueError(f"policy state was saved with {saved}, not {dataclasses.asdict(config)}")
            rng = np.random.default_rng()
            rng.bit_generator.state = ast.literal_eval(bytes(z["rng"]).decode())
            pol = cls(config, rng)
            pol.A, pol.b, pol.updates = z["A"].copy(), z["b"].copy(), int(z["updates"])
        return pol


POLICY_COLUMNS = 4  # per-item columns of user_item_features before the user x item product


def user_item_features(user: np.ndarray, items: np.ndarray, recent: np.ndarray | None, dim: int,
                       shown: np.ndarray | None = None, clicked: np.ndarray | None = None,
                       bandwidth: float = 0.1, prior_ctr: float = 0.1, prior_weight: float = 1.0) -> np.ndarray:
    """The per-item policy columns serving passes as ``item_features`` (``POLICY_COLUMNS + dim``):

    0. the largest cosine between the item and the items engaged with since training (``recent``,
       ``(R, d)``; 0 without any) -- what the shopper is after *now*;
    1. the shopper's own recent click rate near the item: over the items of the last answers
       (``shown``, ``(S, d)``, with ``clicked`` flags), a kernel-weighted mean with weights
       ``exp((cos - 1) / bandwidth)``, shrunk towards ``prior_ctr`` with ``prior_weight``
       pseudo-impressions (a per-shopper, per-neighbourhood estimate: kernel regression over the
       item space, cf. kernelised bandits, Valko et al., UAI 2013);
    2. how little of it the shopper has seen lately: ``1 / sqrt(1 + sum of those weights)``;
    3. the cosine of the user vector ``user`` (``(d,)``) and the item vector;
    4... the first ``dim`` coordinates of the elementwise product of the unit user and item vectors
       (zero-padded when the model's vectors are shorter): the shared linear model over ``user x item``.

    >>> f = user_item_features(np.array([1.0, 0.0]), np.array([[2.0, 0.0], [0.0, 1.0]]), None, dim=3,
    ...                        shown=np.array([[1.0, 0.0]]), clicked=np.array([False]))
    >>> f.shape, f[:, 3].tolist(), f[0, 4:].tolist()
    ((2, 7), [1.0, 0.0], [1.0, 0.0, 0.0])
    >>> bool(f[0, 1] < f[1, 1]), bool(f[0, 2] < f[1, 2])  # ignored nearby: lower rate, less novel
    (True, True)
    """
    def unit(v: np.ndarray) -> np.ndarray:
        return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)

    u, v = unit(np.asarray(user, dtype=np.float32)), unit(np.asarray(items, dtype=np.float32))
    out = np.zeros((len(v), POLICY_COLUMNS + dim), dtype=np.float32)
    if recent is not None and len(recent):
        out[:, 0] = (v @ unit(np.asarray(recent, dtype=np.float32)).T).max(axis=1)
    mass = np.zeros(len(v), dtype=np.float32)
    hits = np.zeros(len(v), dtype=np.float32)
    if shown is not None and len(shown):
        w = np.exp((v @ unit(np.asarray(shown, dtype=np.float32)).T - 1.0) / bandwidth)
        mass = w.sum(axis=1)
        hits = w @ np.asarray(clicked, dtype=np.float32)
    out[:, 1] = (hits + prior_weight * prior_ctr) / (mass + prior_weight)
    out[:, 2] = 1.0 / np.sqrt(1.0 + mass)
    out[:, 3] = v @ u
    prod = (v * u)[:, :dim]
    out[:, POLICY_COLUMNS:POLICY_COLUMNS + prod.shape[1]] = prod
    return out
