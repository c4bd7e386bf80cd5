"""The reward model of the direct and doubly robust estimators: a logistic regression, cross-fitted.

``logit q̂(i, a, k) = b + alpha_a + gamma_k + theta . F[i, a] + delta . X[i]`` -- an action effect,
a position effect, per-(round, action) features ``F`` (OBD: the user-item affinity) and round
features ``X`` (OBD: the hashed user features, one-hot). Fitted by Newton's method (IRLS) with an
L2 penalty on the factual rounds. **Cross-fitting** (Chernozhukov et al. 2018; as in OBP's
``RegressionModel.fit_predict``): the rounds are split into ``folds``, and each fold's
predictions come from a model fitted on the other folds, so DR's correction does not reuse the
rounds its model memorised. Plain numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.evaluation.ope.estimators import LoggedFeedback, OPEError


@dataclass(frozen=True)
class RewardFeatures:
    per_action: np.ndarray | None = None  # (n, A, m) features of a round's actions
    per_round: np.ndarray | None = None  # (n, d) features of the round


def _design(logged: LoggedFeedback, feats: RewardFeatures, rows: np.ndarray) -> np.ndarray:
    n = len(rows)
    parts = [np.ones((n, 1)), np.eye(logged.n_actions)[logged.action[rows]],
             np.eye(logged.n_positions)[logged.position[rows]]]
    if feats.per_action is not None:
        parts.append(feats.per_action[rows, logged.action[rows]])
    if feats.per_round is not None:
        parts.append(feats.per_round[rows])
    return np.hstack(parts)


def _fit(x: np.ndarray, y: np.ndarray, l2: float, iters: int = 50) -> np.ndarray:
    beta = np.zeros(x.shape[1])
    penalty = np.full(x.shape[1], l2)
    penalty[0] = 1e-6  # the intercept is not shrunk
    for _ in range(iters):
        p = 1 / (1 + np.exp(-np.clip(x @ beta, -30, 30)))
        grad = x.T @ (p - y) + penalty * beta
        hess = (x * (p * (1 - p))[:, None]).T @ x + np.diag(penalty)
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.abs(step).max() < 1e-8:
            break
    return beta


def _predict(beta: np.ndarray, logged: LoggedFeedback, feats: RewardFeatures, rows: np.ndarray) -> np.ndarray:
    a, k = logged.n_actions, logged.n_positions
    b, alpha, gamma = beta[0], beta[1:1 + a], beta[1 + a:1 + a + k]
    at = 1 + a + k
    logit = b + alpha[None, :, None] + gamma[None, None, :]
    logit = np.broadcast_to(logit, (len(rows), a, k)).copy()
    if feats.per_action is not None:
        m = feats.per_action.shape[2]
        logit += (feats.per_action[rows] @ beta[at:at + m])[:, :, None]
        at += m
    if feats.per_round is not None:
        logit += (feats.per_round[rows] @ beta[at:])[:, None, None]
    return 1 / (1 + np.exp(-np.clip(logit, -30, 30)))


def cross_fitted_rewards(logged: LoggedFeedback, feats: RewardFeatures = RewardFeatures(), folds: int = 3,
                         l2: float = 1.0, seed: int = 0) -> np.ndarray:
    """``q̂`` of shape ``(rounds, actions, positions)``; each round predicted by a model that did
    not see it (``folds`` >= 2), or by one model fitted on everything (``folds`` = 1)."""
    rng = np.random.default_rng(seed)
    fold = rng.permutation(logged.n) % max(folds, 1)
    q = np.empty((logged.n, logged.n_actions, logged.n_positions))
    if not np.isin(logged.reward, (0, 1)).all():
        raise OPEError("the reward model is a logistic regression: rewards must be 0 or 1 (clicks)")
    y = logged.reward.astype(float)
    for f in range(max(folds, 1)):
        test = np.flatnonzero(fold == f)
        train = np.flatnonzero(fold != f) if folds > 1 else test
        beta = _fit(_design(logged, feats, train), y[train], l2)
        q[test] = _predict(beta, logged, feats, test)
    return q
