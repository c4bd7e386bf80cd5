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
retriever rank (log), the multi-task heads' P(cart)/P(purchase) when present, a bias, and the
request's context (hashed one-hot buckets of ``context`` key=value pairs) crossed with the
ranker score. Plain numpy, no Ray; randomness comes from an injected ``np.random.Generator``.

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
    seed: int = 0

    def __post_init__(self):
        if not 0 <= self.epsilon <= 1:
            raise ValueError(f"epsilon must be in [0, 1], got {self.epsilon}")
        if self.alpha < 0 or self.ridge <= 0 or self.context_buckets < 1:
            raise ValueError("alpha must be >= 0, ridge > 0 and context_buckets >= 1")

    @classmethod
    def tiny(cls) -> PolicyConfig:
        return cls(epsilon=0.1, context_buckets=8)

    @property
    def dim(self) -> int:
        return 5 + self.context_buckets


@dataclass(frozen=True)
class Shown:
    index: int  # index of the item in the candidate list passed to ``choose``
    position: int  # slot in the slate, 0 = top
    propensity: float  # probability that the policy put this item in this slot
    greedy: bool  # the UCB choice (else an exploration draw)
    features: np.ndarray  # what the policy saw: the update uses the same vector


def _bucket(key: str, buckets: int) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=4).digest(), "little") % buckets


class LinUCBPolicy:
    def __init__(self, config: PolicyConfig, rng: np.random.Generator):
        self.config, self.rng = config, rng
        d = config.dim
        self.A = np.eye(d) * config.ridge  # precision matrix
        self.b = np.zeros(d)
        self.updates = 0

    # -- features ------------------------------------------------------------------------------

    def features(self, items: list[dict], context: dict | None) -> np.ndarray:
        """``(len(items), dim)``: per item ``score`` (ranker logit), optional ``retriever_rank``,
        ``p_cart``, ``p_purchase``; the context crossed with the standardised score."""
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
        return x

    def ucb(self, x: np.ndarray) -> np.ndarray:
        inv = np.linalg.inv(self.A)
        theta = inv @ self.b
        return x @ theta + self.config.alpha * np.sqrt(np.einsum("ij,jk,ik->i", x, inv, x).clip(min=0.0))

    # -- acting and learning -------------------------------------------------------------------

    def choose(self, items: list[dict], context: dict | None, k: int) -> list[Shown]:
        """Fill ``min(k, len(items))`` slots; see the module docstring for the propensities."""
        x = self.features(items, context)
        u = self.ucb(x) if len(items) else np.zeros(0)
        remaining = list(range(len(items)))
        out = []
        for pos in range(min(k, len(items))):
            greedy = max(remaining, key=lambda i: (u[i], -i))  # ties: earlier (better-ranked) item
            explore = self.rng.random() < self.config.epsilon
            pick = remaining[int(self.rng.integers(len(remaining)))] if explore else greedy
            eps, n = self.config.epsilon, len(remaining)
            prop = (1 - eps) * (pick == greedy) + eps / n
            out.append(Shown(pick, pos, float(prop), pick == greedy, x[pick]))
            remaining.remove(pick)
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
