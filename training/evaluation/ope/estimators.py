"""Off-policy estimators for logged bandit feedback with positions (plain numpy, no Ray).

The logged data are rounds ``i``: the logging policy showed ``action[i]`` at ``position[i]`` with
probability ``pscore[i]`` and saw ``reward[i]``. A target policy is ``action_dist[i, a, k]``: the
probability that it shows action ``a`` at position ``k`` in round ``i`` (summing to 1 over ``a``).
The conventions -- one round per shown item, the value being the mean reward per round -- are Open
Bandit Pipeline's (Saito et al., 2021), so the numbers can be checked against it
(``benchmarks/ope_obp.py``). With ``w_i = action_dist[i, action_i, position_i] / pscore_i``:

* **IPS** (Horvitz & Thompson 1952; Precup et al. 2000): ``mean(w r)``. Unbiased when the logger
  gave every action the target may take a positive probability (common support) and the
  pscores are exact.
* **SNIPS** (Swaminathan & Joachims 2015): ``sum(w r) / sum(w)``. Biased (consistent), lower variance.
* **DM** (direct method): ``mean_i sum_a action_dist[i, a, k_i] q̂(i, a, k_i)``. As good as the reward
  model ``q̂``; no weights.
* **DR** (Dudík et al. 2011): ``DM + mean(w (r - q̂(i, a_i, k_i)))``. Unbiased if either the
  pscores or the reward model are right.
* **Switch-DR** (Wang et al. 2017): DR whose correction uses only rounds with ``w <= tau``
  (the rest rely on the model): bounded variance, bias where the weights are large.

Every result carries a bootstrap 95 % interval (percentile, over rounds), the effective sample size
``(sum w)^2 / sum w^2`` and the largest weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.common.errors import DataError

ESTIMATORS = ("ips", "snips", "dm", "dr", "switch-dr")


class OPEError(DataError):
    """Input that cannot be evaluated; the message names the problem."""


@dataclass(frozen=True)
class LoggedFeedback:
    reward: np.ndarray  # (n,) float
    action: np.ndarray  # (n,) int in [0, n_actions)
    position: np.ndarray  # (n,) int in [0, n_positions)
    pscore: np.ndarray  # (n,) the logger's probability of (action, position) in the round
    n_actions: int
    n_positions: int

    def __post_init__(self):
        n = len(self.reward)
        if n == 0:
            raise OPEError("the log is empty: nothing to evaluate")
        for name in ("action", "position", "pscore"):
            if len(getattr(self, name)) != n:
                raise OPEError(f"{name}: {len(getattr(self, name))} values for {n} rounds")
        if not np.isfinite(self.pscore).all() or (self.pscore <= 0).any() or (self.pscore > 1).any():
            bad = int(np.flatnonzero(~np.isfinite(self.pscore) | (self.pscore <= 0) | (self.pscore > 1))[0])
            raise OPEError(f"propensity: must be in (0, 1]; round {bad} has {self.pscore[bad]!r}")
        if (self.action < 0).any() or (self.action >= self.n_actions).any():
            raise OPEError(f"action: ids must be in [0, {self.n_actions})")
        if (self.position < 0).any() or (self.position >= self.n_positions).any():
            raise OPEError(f"position: must be in [0, {self.n_positions})")

    @property
    def n(self) -> int:
        return len(self.reward)


def effective_sample_size(w: np.ndarray) -> float:
    """Kish's effective sample size of importance weights: ``(sum w)^2 / sum w^2``."""
    return float(w.sum() ** 2 / max((w ** 2).sum(), 1e-300))


def ci95(samples: np.ndarray) -> list[float]:
    """The percentile 95 % interval of bootstrap ``samples``."""
    return [float(x) for x in np.percentile(samples, [2.5, 97.5])]


def ratio_samples(num: np.ndarray, den: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """A self-normalised estimate ``sum num / sum den`` on each bootstrap resample ``idx`` (rows)."""
    return num[idx].sum(1) / np.maximum(den[idx].sum(1), 1e-300)


def check_action_dist(action_dist: np.ndarray, logged: LoggedFeedback, tol: float = 1e-6) -> None:
    want = (logged.n, logged.n_actions, logged.n_positions)
    if action_dist.shape != want:
        raise OPEError(f"target policy: shape {action_dist.shape}, expected (rounds, actions, positions) = {want}")
    if (action_dist < 0).any() or not np.isfinite(action_dist).all():
        raise OPEError("target policy: probabilities must be finite and >= 0")
    sums = action_dist.sum(axis=1)
    bad = np.argwhere(np.abs(sums - 1) > tol)
    if len(bad):
        i, k = bad[0]
        raise OPEError(f"target policy: probabilities of round {i} at position {k} sum to {sums[i, k]:.6g}, not 1")


def round_values(name: str, logged: LoggedFeedback, action_dist: np.ndarray, q_hat: np.ndarray | None = None,
                 tau: float = 100.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-round contributions whose mean is the estimate (SNIPS: its normalised form), and the
    importance weights."""
    idx = np.arange(logged.n)
    w = action_dist[idx, logged.action, logged.position] / logged.pscore
    r = logged.reward
    if name == "ips":
        return w * r, w
    if name == "snips":
        return w * r / w.mean(), w
    if q_hat is None:
        raise OPEError(f"{name}: needs reward-model predictions")
    q_at = q_hat[idx, :, logged.position]
    pi_at = action_dist[idx, :, logged.position]
    dm = (q_at * pi_at).sum(axis=1)
    if name == "dm":
        return dm, w
    resid = r - q_at[idx, logged.action]
    if name == "dr":
        return dm + w * resid, w
    if name == "switch-dr":
        return dm + (w <= tau) * w * resid, w
    raise OPEError(f"unknown estimator {name!r} (known: {', '.join(ESTIMATORS)})")


def estimate(logged: LoggedFeedback, action_dist: np.ndarray, q_hat: np.ndarray | None = None,
             estimators: tuple[str, ...] = ESTIMATORS, bootstrap: int = 1000, seed: int = 0,
             tau: float = 100.0) -> dict:
    """``{name: {"value", "ci95", "effective_sample_size", "max_weight"}}`` for each estimator
    (DM/DR/Switch-DR only with ``q_hat``, shape ``(rounds, actions, positions)``)."""
    check_action_dist(action_dist, logged)
    if q_hat is not None and q_hat.shape != action_dist.shape:
        raise OPEError(f"reward model: shape {q_hat.shape}, expected {action_dist.shape}")
    rng = np.random.default_rng(seed)
    boot = rng.integers(0, logged.n, size=(bootstrap, logged.n)) if bootstrap else None
    out = {}
    for name in estimators:
        if name in ("dm", "dr", "switch-dr") and q_hat is None:
            continue
        values, w = round_values(name, logged, action_dist, q_hat, tau)
        res: dict[str, float | list[float]] = {
            "value": float(values.mean()), "effective_sample_size": effective_sample_size(w),
            "max_weight": float(w.max()), "rounds": int(logged.n)}
        if boot is not None:  # SNIPS: the ratio resampled as a whole
            res["ci95"] = ci95(ratio_samples(w * logged.reward, w, boot) if name == "snips" else values[boot].mean(1))
        if name == "switch-dr":
            res["tau"] = tau
        out[name] = res
    return out
