"""The pseudo-inverse (PI) slate estimator, for a logger whose slate distribution is known.

Swaminathan, Krishnamurthy, Agarwal, Dudík, Langford, Jose & Zitouni (2017), "Off-policy evaluation
for slate recommendation". A slate of ``L`` slots over ``m`` candidates is the indicator vector
``1_s`` in ``R^(L*m)`` (slot ``j`` holds candidate ``a``). With the logger's moment matrix
``Gamma = E_mu[1_s 1_s^T]`` and the target's slot marginals ``q = E_pi[1_s]``, each logged round
``i`` gets the weight

    w_i = q_i^T Gamma^+ 1_{s_i}        (Gamma^+: the Moore-Penrose pseudo-inverse)

and ``V_PI = mean(w_i r_i)``. **Assumption: the slate's expected reward is additive over slots**,
``E[r | s] = sum_j phi(j, s_j)`` (any slot- and item-dependent terms). Then PI is unbiased, and
its weights are far smaller than the slate IPS weight ``pi(s) / mu(s)`` (exponentially in ``L``):
it needs much less data. When clicks interact (a shopper who stops after the first click: the
cascade), additivity fails and PI is biased -- the slate IPS of :mod:`training.evaluation.ope.slate_target`
needs no such assumption. ``tests/unit/training/evaluation/ope/test_slate_pi.py`` shows both.

**What "known logger" means here**: ``Gamma`` needs the logger's *joint* slot distribution, not
just the per-slot propensity of what it showed. :func:`epsilon_greedy_slates` enumerates it for the
epsilon-greedy logger over a ranking (the serving policy's exploration scheme with a fixed ranking);
rounds are expressed in the logger's rank space (``0`` = its best candidate), so one ``Gamma^+``
serves every round with the same candidate count. The live serving policy (LinUCB with per-request
bonuses, diversity and exploration candidates) logs only the propensity of each shown item, so PI
is not computed on the serving log -- there the slate IPS is the estimator.

Plain numpy, no Ray.
"""

from __future__ import annotations

from itertools import permutations

import numpy as np

from training.evaluation.ope.estimators import OPEError, ci95, effective_sample_size

MAX_SLATES = 200_000  # the enumeration's size limit: m! / (m - L)! ordered slates


def epsilon_greedy_slates(m: int, slots: int, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """Every slate of ``slots`` distinct candidates out of ``m`` (rank indices, ``0`` = best) and
    its probability under epsilon-greedy: each slot takes the best remaining candidate with
    probability ``1 - epsilon`` and a uniformly drawn remaining one with ``epsilon``."""
    if not 1 <= slots <= m:
        raise OPEError(f"slates: need 1 <= slots ({slots}) <= candidates ({m})")
    if not 0 <= epsilon <= 1:
        raise OPEError(f"epsilon must be in [0, 1], got {epsilon}")
    count = int(np.prod(np.arange(m - slots + 1, m + 1, dtype=np.float64)))
    if count > MAX_SLATES:
        raise OPEError(f"slates: {count:,} ordered slates of {slots} out of {m} candidates; "
                       f"the exact moment matrix is limited to {MAX_SLATES:,}")
    slates = np.array(list(permutations(range(m), slots)), dtype=np.int64).reshape(-1, slots)
    prob = np.ones(len(slates))
    for j in range(slots):
        left = m - j
        # the best remaining candidate is the smallest rank not used by the earlier slots
        used = slates[:, :j]
        best = np.array([min(set(range(m)) - set(u)) for u in used]) if j else np.zeros(len(slates), np.int64)
        prob *= epsilon / left + (1 - epsilon) * (slates[:, j] == best)
    return slates, prob


def indicators(slates: np.ndarray, m: int) -> np.ndarray:
    """``(S, L*m)`` 0/1 rows: slot ``j`` holds candidate ``a`` at column ``j*m + a``."""
    n, slots = slates.shape
    out = np.zeros((n, slots * m))
    out[np.arange(n)[:, None], np.arange(slots) * m + slates] = 1.0
    return out


def moment_matrix(slates: np.ndarray, prob: np.ndarray, m: int) -> np.ndarray:
    """``Gamma = E[1_s 1_s^T]`` of the slate distribution ``(slates, prob)``."""
    x = indicators(slates, m)
    return (x * prob[:, None]).T @ x


def marginals(slates: np.ndarray, prob: np.ndarray, m: int) -> np.ndarray:
    """``q = E[1_s]``, shape ``(L*m,)``: the probability that slot ``j`` holds candidate ``a``."""
    return prob @ indicators(slates, m)


def target_marginals(ranking: np.ndarray, slots: int, epsilon: float) -> np.ndarray:
    """Slot marginals of epsilon-greedy over ``ranking`` (the target's order of the logger's rank
    indices: ``ranking[0]`` is the target's best) in the logger's rank space."""
    ranking = np.asarray(ranking)
    m = len(ranking)
    if sorted(ranking.tolist()) != list(range(m)):
        raise OPEError("target ranking: must order every candidate exactly once")
    slates, prob = epsilon_greedy_slates(m, slots, epsilon)
    return marginals(ranking[slates], prob, m)


def pseudo_inverse_value(rewards: np.ndarray, logged: np.ndarray, q: np.ndarray, gamma: np.ndarray,
                         bootstrap: int = 1000, seed: int = 0) -> dict:
    """PI estimate from rounds ``i``: ``rewards[i]`` (the slate's total), ``logged[i]`` (its slate
    as logger rank indices, ``(n, L)``), ``q[i]`` (the target's slot marginals, ``(n, L*m)`` or one
    ``(L*m,)`` row for all) and the logger's ``gamma``. Returns value, ci95, effective sample size
    and the weight range (PI weights can be negative)."""
    rewards = np.asarray(rewards, np.float64)
    n = len(rewards)
    if n == 0:
        raise OPEError("the log is empty: nothing to evaluate")
    m = gamma.shape[0] // logged.shape[1]
    if logged.shape[0] != n or logged.min() < 0 or logged.max() >= m:
        raise OPEError(f"logged slates: expected ({n}, L) rank indices in [0, {m})")
    g_pinv = np.linalg.pinv(gamma, hermitian=True)
    v = np.atleast_2d(q) @ g_pinv  # (1 or n, L*m)
    cols = np.arange(logged.shape[1]) * m + logged
    w = np.take_along_axis(np.broadcast_to(v, (n, v.shape[1])), cols, 1).sum(1)
    values = w * rewards
    out = {"value": float(values.mean()), "effective_sample_size": effective_sample_size(w),
           "max_weight": float(w.max()), "min_weight": float(w.min()), "rounds": n,
           "assumption": "the slate's expected reward is additive over slots"}
    if bootstrap:
        idx = np.random.default_rng(seed).integers(0, n, size=(bootstrap, n))
        out["ci95"] = ci95(values[idx].mean(1))
    return out
