"""The pseudo-inverse slate estimator against a known truth (no Ray).

An epsilon-greedy logger fills 3 slots from 6 ranked candidates; the target is another ranking
(greedy, and epsilon-greedy). Where the reward is additive over slots (independent clicks with a
position factor) PI is unbiased and needs far less data than the slate IPS; where it is not (a
shopper who clicks at most once, in a cascade) PI is biased and the slate IPS is not.
"""

import numpy as np
import pytest

from training.evaluation.ope.estimators import OPEError
from training.evaluation.ope.slate_pi import (
    epsilon_greedy_slates,
    marginals,
    moment_matrix,
    pseudo_inverse_value,
    target_marginals,
)

M, L, EPS = 6, 3, 0.5
ATTRACT = np.array([0.10, 0.30, 0.05, 0.50, 0.20, 0.15])  # by logger rank
THETA = np.array([1.0, 0.7, 0.5])  # examination by slot
TARGET = np.argsort(-ATTRACT, kind="stable")  # the target ranks by true attraction


def _log(n: int, seed: int, cascade: bool):
    rng = np.random.default_rng(seed)
    slates, prob = epsilon_greedy_slates(M, L, EPS)
    logged = slates[rng.choice(len(slates), size=n, p=prob)]
    p = ATTRACT[logged]
    if cascade:  # scan in order, click the first attractive item, stop
        hit = rng.random(p.shape) < p
        rewards = hit.any(1).astype(float)
    else:
        rewards = (rng.random(p.shape) < THETA * p).sum(1).astype(float)
    return slates, prob, logged, rewards


def _truth(slates, prob, cascade: bool) -> float:
    p = ATTRACT[slates]
    per_slate = 1 - np.prod(1 - p, 1) if cascade else (THETA * p).sum(1)
    return float(prob @ per_slate)


def _slate_ips(logged, rewards, target_slates, target_prob, log_slates, log_prob):
    pi = {tuple(s): p for s, p in zip(target_slates, target_prob)}
    mu = {tuple(s): p for s, p in zip(log_slates, log_prob)}
    w = np.array([pi.get(tuple(s), 0.0) / mu[tuple(s)] for s in logged])
    return w * rewards, w


def test_enumerated_slates_are_a_distribution_with_the_logged_slot_marginals():
    slates, prob = epsilon_greedy_slates(M, L, EPS)
    assert len(slates) == 6 * 5 * 4 and abs(prob.sum() - 1) < 1e-12
    q = marginals(slates, prob, M).reshape(L, M)
    assert np.allclose(q.sum(1), 1)  # each slot holds exactly one candidate
    assert abs(q[0, 0] - (1 - EPS + EPS / M)) < 1e-12  # the best candidate in slot 0
    assert np.allclose(moment_matrix(slates, prob, M).diagonal(), q.ravel())  # E[x_k^2] = E[x_k]


@pytest.mark.parametrize("target_eps", [0.0, 0.2])
def test_pi_is_unbiased_when_the_reward_is_additive_and_beats_slate_ips_on_variance(target_eps):
    slates, prob = epsilon_greedy_slates(M, L, EPS)
    gamma = moment_matrix(slates, prob, M)
    q = target_marginals(TARGET, L, target_eps)
    t_slates, t_prob = epsilon_greedy_slates(M, L, target_eps)
    t_slates = TARGET[t_slates]
    truth = _truth(t_slates, t_prob, cascade=False)
    covered, pi_width, ips_width = 0, [], []
    for seed in range(8):
        _, _, logged, rewards = _log(4000, seed, cascade=False)
        est = pseudo_inverse_value(rewards, logged, q, gamma, bootstrap=300, seed=seed)
        covered += est["ci95"][0] <= truth <= est["ci95"][1]
        pi_width.append(est["ci95"][1] - est["ci95"][0])
        values, w = _slate_ips(logged, rewards, t_slates, t_prob, slates, prob)
        boot = np.random.default_rng(seed).integers(0, len(values), (300, len(values)))
        lo, hi = np.percentile(values[boot].mean(1), [2.5, 97.5])
        ips_width.append(hi - lo)
    assert covered >= 6, (covered, truth)
    # the same data: PI's interval is far narrower than the slate IPS's
    assert np.mean(pi_width) < 0.5 * np.mean(ips_width), (np.mean(pi_width), np.mean(ips_width))


def test_pi_is_biased_in_a_cascade_where_slate_ips_is_not():
    slates, prob = epsilon_greedy_slates(M, L, EPS)
    gamma = moment_matrix(slates, prob, M)
    q = target_marginals(TARGET, L, 0.0)
    truth = _truth(TARGET[slates[:1]], np.ones(1), cascade=True)  # the greedy target's one slate
    _, _, logged, rewards = _log(60_000, 1, cascade=True)
    pi = pseudo_inverse_value(rewards, logged, q, gamma, bootstrap=200)
    values, _ = _slate_ips(logged, rewards, TARGET[slates[:1]], np.ones(1), slates, prob)
    boot = np.random.default_rng(0).integers(0, len(values), (200, len(values)))
    lo, hi = np.percentile(values[boot].mean(1), [2.5, 97.5])
    assert lo <= truth <= hi, (lo, truth, hi)  # slate IPS: no assumption on the reward
    assert not pi["ci95"][0] <= truth <= pi["ci95"][1], (pi, truth)  # PI: additivity fails


def test_bad_input_is_named():
    with pytest.raises(OPEError, match="slots"):
        epsilon_greedy_slates(3, 4, 0.1)
    with pytest.raises(OPEError, match="limited"):
        epsilon_greedy_slates(200, 10, 0.1)
    with pytest.raises(OPEError, match="exactly once"):
        target_marginals(np.array([0, 0, 1]), 2, 0.0)
    slates, prob = epsilon_greedy_slates(4, 2, 0.3)
    with pytest.raises(OPEError, match="empty"):
        pseudo_inverse_value(np.zeros(0), np.zeros((0, 2), int), marginals(slates, prob, 4),
                             moment_matrix(slates, prob, 4))
