"""Off-policy evaluation of Raycart's own slates (the serving feedback log), and the ``raycart ope`` command.

Every shown item is logged with its slot, the probability that the policy put it there *given the
items in the slots before it* (``propensity``; :mod:`training.models.bandit`) and whether it was
the policy's exploit choice (``greedy``). Rewards come from the feedback events joined on
``(request_id, item_id)`` (:data:`~training.models.bandit.REWARDS`: click 1, cart 2, purchase 5;
the best event per shown item counts); a request's reward is the sum over its slots.

* ``logged``: the average reward per request under the policy that served (on-policy).
* ``greedy`` target (the same policy with its exploration switched off), two estimators:

  - **slate IPS / SNIPS** (``ips``, ``snips``): the whole slate is the action. Its logged
    probability is the product of the per-slot propensities (each is conditional on the slots
    before it, so the product is exact), and the greedy policy would have shown exactly this slate
    iff every slot was its greedy choice. ``IPS = mean_requests [all greedy] R / prod_s p_s``.
    Unbiased with no assumption on how shoppers react to a slate; its variance grows with the
    slate length (the weight is ``1 / prod p``).
  - **independent-item IPS** (``iips``; Li et al., "Offline evaluation of ranking policies with
    click models", KDD 2018): ``mean_requests sum_s r_s [greedy_s] / p_s``, slot by slot. Assumes
    an item's reward depends only on the item and its slot -- not on the rest of the slate -- and
    that the target's choice in a slot does not depend on what the *logger* put before it. Both
    fail for a greedy re-ranker and a shopper who clicks at most once: the greedy choice in slot 2
    given an explored slot 1 is the best item, shown where the all-greedy slate has the second
    best, so ``iips`` overstates the greedy slate (by +21 % at epsilon 0.3, +39 % at 0.5 in
    ``tests/unit/training/evaluation/test_ope.py``). Kept for comparison, with its variance (much lower).

95 % intervals by bootstrap over requests; effective sample size and the largest weight with each.
Plain pyarrow/numpy, no Ray. Logged bandit feedback with one action per round (Open Bandit
Dataset) is evaluated by :mod:`training.evaluation.estimators`.

>>> import pyarrow as pa
>>> imp = pa.table({"request_id": ["a", "a", "b", "b"], "item_id": ["x", "y", "x", "z"],
...                 "position": [0, 1, 0, 1], "propensity": [0.9, 0.1, 0.9, 0.9],
...                 "greedy": [True, False, True, True]})
>>> ev = pa.table({"request_id": ["a", "b"], "item_id": ["x", "z"], "event": ["click", "purchase"]})
>>> r = off_policy_value(imp, ev, bootstrap=0)
>>> r["logged"]["value"], round(r["greedy"]["ips"], 3), round(r["greedy"]["iips"], 3)
(3.0, 3.086, 3.333)
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
import pyarrow as pa

from training.evaluation.estimators import ci95, effective_sample_size, ratio_samples
from training.models.bandit import REWARDS

log = logging.getLogger(__name__)


def rewards_per_impression(impressions: pa.Table, events: pa.Table) -> np.ndarray:
    """Each impression's reward: its best event's (click 1, cart 2, purchase 5; 0 without one)."""
    best: dict[tuple[str, str], float] = {}
    for rid, item, event in zip(events["request_id"].to_pylist(), events["item_id"].to_pylist(),
                                events["event"].to_pylist()):
        key = (rid, item)
        best[key] = max(best.get(key, 0.0), REWARDS.get(event, 0.0))
    return np.array([best.get(k, 0.0) for k in zip(impressions["request_id"].to_pylist(),
                                                     impressions["item_id"].to_pylist())])


def off_policy_value(impressions: pa.Table, events: pa.Table, bootstrap: int = 1000, seed: int = 0) -> dict:
    """Logged value and the greedy policy's IPS / SNIPS estimates per request (see module doc)."""
    greedy_col = impressions["greedy"].to_pylist() if "greedy" in impressions.column_names else []
    keep = np.array([g is not None for g in greedy_col], dtype=bool) if greedy_col else \
        np.zeros(impressions.num_rows, bool)
    reward = rewards_per_impression(impressions, events)
    requests, req_idx = np.unique(np.asarray(impressions["request_id"].to_pylist(), dtype=object).astype(str),
                                  return_inverse=True)
    n = len(requests)
    logged = np.bincount(req_idx, weights=reward, minlength=n)
    out = {"requests": int(n), "impressions": int(impressions.num_rows), "events": int(events.num_rows),
           "logged": {"value": float(logged.mean()) if n else float("nan")}}
    if not keep.any():
        out["greedy"] = None  # logs written before the greedy flag existed
        return out
    prop = np.asarray(impressions["propensity"].to_pylist(), dtype=np.float64)
    greedy = np.array([bool(g) for g in greedy_col])
    slots = np.bincount(req_idx, weights=keep.astype(float), minlength=n)
    used = slots > 0
    # slate: [every slot greedy] / prod p  (log-space product over the request's slots)
    log_p = np.bincount(req_idx, weights=np.where(keep, np.log(np.clip(prop, 1e-300, None)), 0.0), minlength=n)
    all_greedy = np.bincount(req_idx, weights=(keep & ~greedy).astype(float), minlength=n) == 0
    w_slate = np.where(all_greedy, np.exp(-log_p), 0.0)[used]
    value = logged[used]
    slate_r = w_slate * value
    # independent items: per slot
    w_item = np.where(keep & greedy, 1.0 / np.clip(prop, 1e-12, None), 0.0)
    iips_r = np.bincount(req_idx, weights=w_item * reward, minlength=n)[used]
    g = {"requests": int(used.sum()),
         "ips": float(slate_r.mean()), "snips": float(slate_r.sum() / max(w_slate.sum(), 1e-300)),
         "effective_sample_size": effective_sample_size(w_slate),
         "max_weight": float(w_slate.max()),
         "iips": float(iips_r.mean()),
         "iips_effective_sample_size": effective_sample_size(w_item),
         "iips_max_weight": float(w_item.max())}
    out["greedy"] = g
    if bootstrap:
        rng = np.random.default_rng(seed)
        m = len(slate_r)
        idx = rng.integers(0, m, size=(bootstrap, m))
        lg = rng.integers(0, n, size=(bootstrap, n))
        g["ips_95ci"] = ci95(slate_r[idx].mean(1))
        g["snips_95ci"] = ci95(ratio_samples(slate_r, w_slate, idx))
        g["iips_95ci"] = ci95(iips_r[idx].mean(1))
        out["logged"]["value_95ci"] = ci95(logged[lg].mean(1))
    return out


def _cmd(a: argparse.Namespace) -> int:
    from training.evaluation.run import write_json

    if not a.feedback and not a.data:
        from training.errors import DataError

        raise DataError("give --feedback ROOT (the serving log) or --data DIR (logged bandit feedback)")
    result = _serving_log(a) if a.feedback else _bandit_data(a)
    if a.out:
        write_json(result, a.out)
        log.info(f"wrote {a.out}")
    return 0


def _serving_log(a: argparse.Namespace) -> dict:
    from training.data.feedback import read_feedback
    from training.errors import DataError

    impressions = read_feedback(a.feedback, "impressions")
    if impressions.num_rows == 0:
        raise DataError(f"{a.feedback}: the feedback log holds no impressions")
    if a.target_policy not in (None, "greedy"):
        return _model_target(a, impressions, read_feedback(a.feedback, "events"))
    result = off_policy_value(impressions, read_feedback(a.feedback, "events"), bootstrap=a.bootstrap)
    log.info(f"{result['requests']:,} requests, {result['impressions']:,} impressions, {result['events']:,} events")
    lv = result["logged"]
    log.info(f"logged policy: {lv['value']:.4f} reward per request"
          + (f" (95% CI {lv['value_95ci'][0]:.4f}-{lv['value_95ci'][1]:.4f})" if "value_95ci" in lv else ""))
    g = result["greedy"]
    if g is None:
        log.info("greedy policy: no estimate (these impressions carry no greedy flag)")
        return result
    def ci(k: str) -> str:
        return f" (95% CI {g[k][0]:.4f}-{g[k][1]:.4f})" if k in g else ""

    log.info(f"greedy policy (no exploration): slate IPS {g['ips']:.4f}{ci('ips_95ci')}, SNIPS {g['snips']:.4f}; "
          f"effective sample size {g['effective_sample_size']:.0f} of {g['requests']:,} requests, max weight "
          f"{g['max_weight']:.1f}")
    log.info(f"  independent-item IPS {g['iips']:.4f}{ci('iips_95ci')} (assumes no interaction between slots: "
          "see training/evaluation/ope.py)")
    return result


def _model_target(a: argparse.Namespace, impressions: pa.Table, events: pa.Table) -> dict:
    from training import storage
    from training.errors import DataError
    from training.evaluation.slate_target import model_ranker, target_slate_value

    if not storage.exists(storage.join(a.target_policy, "model.json")):
        raise DataError(f"--target-policy {a.target_policy}: with --feedback, 'greedy' or a Raycart model directory")
    if not a.data:
        raise DataError("--data DIR is required with a model as --target-policy (the dataset it was trained on)")
    result = target_slate_value(impressions, events, model_ranker(a.target_policy, a.data), a.epsilon,
                                bootstrap=a.bootstrap, seed=a.seed)
    result["target_policy"] = a.target_policy
    ips, snips = result["ips"], result["snips"]
    def ci(r: dict) -> str:
        return f" (95% CI {r['ci95'][0]:.4f}-{r['ci95'][1]:.4f})" if "ci95" in r else ""

    log.info(f"{result['requests']:,} requests; logged {result['logged']['value']:.4f} reward per request")
    log.info(f"{a.target_policy} with epsilon {a.epsilon}: slate IPS {ips['value']:.4f}{ci(ips)}, SNIPS "
          f"{snips['value']:.4f}{ci(snips)}; effective sample size {result['effective_sample_size']:.1f}, "
          f"{result['supported_requests']:,} requests it could have shown")
    return result


def _bandit_data(a: argparse.Namespace) -> dict:
    from training.errors import DataError
    from training.evaluation.estimators import estimate
    from training.evaluation.ope_data import bandit_log, read_target_policy
    from training.evaluation.reward_model import cross_fitted_rewards

    if not a.target_policy:
        raise DataError("--target-policy FILE is required with --data (a table item_id, position, probability)")
    bandit = bandit_log(a.data, a.logged_policy)
    dist = read_target_policy(a.target_policy, bandit)
    q_hat = cross_fitted_rewards(bandit.logged, bandit.features, folds=a.folds, seed=a.seed)
    est = estimate(bandit.logged, dist, q_hat, bootstrap=a.bootstrap, seed=a.seed, tau=a.tau)
    result = {"rounds": bandit.logged.n, "logged": {"value": float(bandit.logged.reward.mean())},
              "target_policy": a.target_policy, "reward_model": {"kind": "logistic", "folds": a.folds}, **est}
    log.info(f"{bandit.logged.n:,} logged rounds, {bandit.logged.n_actions} actions, {bandit.logged.n_positions} positions; "
          f"logged value {result['logged']['value']:.5f}")
    log.info(f"{'estimator':<10} {'value':>9} {'95% CI':>21} {'ESS':>9} {'max w':>8}")
    for name, r in est.items():
        ci = f"{r['ci95'][0]:.5f}-{r['ci95'][1]:.5f}" if "ci95" in r else ""
        log.info(f"{name:<10} {r['value']:>9.5f} {ci:>21} {r['effective_sample_size']:>9.0f} {r['max_weight']:>8.2f}")
    return result


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ope", help="off-policy evaluation (the serving log, or logged bandit feedback)",
                       description="--feedback ROOT: the serving log's logged value and the greedy policy's "
                                   "slate IPS/SNIPS (and independent-item IPS). --data DIR --target-policy FILE: "
                                   "IPS, SNIPS, DM, DR and Switch-DR of a target policy on a dataset's logged "
                                   "bandit feedback (e.g. the Open Bandit Dataset).")
    p.add_argument("--feedback", help="feedback log root (local or s3://)")
    p.add_argument("--data", help="a prepared dataset with a bandit table (raycart data prepare --source obd)")
    p.add_argument("--target-policy", help="CSV/Parquet table item_id, position, probability [, round]; "
                                           "with --feedback: 'greedy' (default) or a model directory")
    p.add_argument("--epsilon", type=float, default=0.05,
                   help="a model target explores like the serving policy, with this epsilon")
    p.add_argument("--logged-policy", help="only the rounds this logging policy logged (OBD: random or bts)")
    p.add_argument("--folds", type=int, default=3, help="cross-fitting folds of the reward model")
    p.add_argument("--tau", type=float, default=100.0, help="Switch-DR: largest weight corrected by the data")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap samples for the 95%% intervals")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the result JSON here")
    p.set_defaults(func=_cmd)
