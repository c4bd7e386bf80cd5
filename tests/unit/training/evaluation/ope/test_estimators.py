"""Off-policy estimators on simulated logs with a known truth (no Ray)."""

import numpy as np
import pytest

from training.evaluation.ope.estimators import LoggedFeedback, OPEError, estimate
from training.evaluation.ope.reward_model import RewardFeatures, cross_fitted_rewards

A, K = 8, 3


def _world(seed: int, n: int = 6000):
    """Rounds with a context x (2 features), a position k, the logger's softmax over actions, and
    a click with probability q(x, a, k) = sigmoid(action effect + x.b_a + position effect)."""
    rng = np.random.default_rng(seed)
    base = np.random.default_rng(1234)  # the world is the same in every seed; only the sample changes
    eff, slope, pos = base.normal(-1.5, 0.7, A), base.normal(0, 0.8, (A, 2)), np.array([0.0, -0.4, -0.8])
    x = rng.normal(size=(n, 2))
    k = rng.integers(0, K, n)
    q = 1 / (1 + np.exp(-(eff[None, :, None] + (x @ slope.T)[:, :, None] + pos[None, None, :])))  # (n, A, K)
    logits = 0.5 * x[:, :1] * np.arange(A)[None, :] / A  # the logger depends on the context
    pb = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    a = np.array([rng.choice(A, p=p) for p in pb])
    r = (rng.random(n) < q[np.arange(n), a, k]).astype(float)
    pe = np.zeros((n, A, K))
    pe[:, :, :] = (np.linspace(0.2, 2, A) / np.linspace(0.2, 2, A).sum())[None, :, None]  # prefers late actions
    truth = float((pe[np.arange(n), :, k] * q[np.arange(n), :, k]).sum(1).mean())
    logged = LoggedFeedback(reward=r, action=a, position=k, pscore=pb[np.arange(n), a], n_actions=A, n_positions=K)
    return logged, pe, truth, q, x


def test_ips_snips_dr_cover_the_truth_where_their_assumptions_hold():
    covered = {name: 0 for name in ("ips", "snips", "dr", "switch-dr")}
    errors = {name: [] for name in covered}
    for seed in range(8):
        logged, pe, truth, _, x = _world(seed)
        q_hat = cross_fitted_rewards(logged, RewardFeatures(per_round=x), folds=3, seed=seed)
        res = estimate(logged, pe, q_hat, bootstrap=400, seed=seed)
        for name in covered:
            covered[name] += res[name]["ci95"][0] <= truth <= res[name]["ci95"][1]
            errors[name].append(res[name]["value"] - truth)
            assert res[name]["effective_sample_size"] > 100 and res[name]["max_weight"] > 1
    for name in ("ips", "snips", "dr"):
        assert covered[name] >= 6, (name, covered)
        assert abs(np.mean(errors[name])) < 0.01, (name, np.mean(errors[name]))


def test_dm_is_exact_with_the_true_model_and_dr_needs_only_one_of_the_two():
    logged, pe, truth, q, _ = _world(0)
    res = estimate(logged, pe, q, bootstrap=0)
    assert abs(res["dm"]["value"] - truth) < 1e-12  # the true model: DM is the truth itself
    wrong = np.full_like(q, 0.5)  # a useless model: DM is far off, DR still right (pscores exact)
    res = estimate(logged, pe, wrong, bootstrap=0)
    assert abs(res["dm"]["value"] - truth) > 0.2 and abs(res["dr"]["value"] - truth) < 0.02


def test_the_reward_model_is_cross_fitted():
    logged, _, _, q, x = _world(3, n=4000)
    q_hat = cross_fitted_rewards(logged, RewardFeatures(per_round=x), folds=3, seed=0)
    assert q_hat.shape == (4000, A, K) and ((q_hat > 0) & (q_hat < 1)).all()
    # it learned the world, up to what it can express (one slope on x shared by every action): r 0.62
    assert np.corrcoef(q_hat.ravel(), q.ravel())[0, 1] > 0.5


def test_bad_input_is_named():
    logged, pe, _, _, _ = _world(0, n=50)
    with pytest.raises(OPEError, match="empty"):
        LoggedFeedback(np.zeros(0), np.zeros(0, int), np.zeros(0, int), np.zeros(0), A, K)
    with pytest.raises(OPEError, match="propensity: must be in"):
        LoggedFeedback(logged.reward, logged.action, logged.position, np.where(np.arange(50) == 7, 0, logged.pscore),
                       A, K)
    bad = pe.copy()
    bad[3, 0, 1] += 0.2
    with pytest.raises(OPEError, match="round 3 at position 1 sum to 1.2"):
        estimate(logged, bad, bootstrap=0)
    with pytest.raises(OPEError, match="action: ids"):
        LoggedFeedback(logged.reward, logged.action + A, logged.position, logged.pscore, A, K)
