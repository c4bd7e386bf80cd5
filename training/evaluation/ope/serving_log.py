"""Off-policy evaluation of Raycart's own slates (the serving feedback log).

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
    ``tests/unit/training/evaluation/ope/test_serving_log.py``). Kept for comparison, with its
    variance (much lower).

95 % intervals by bootstrap over requests; effective sample size and the largest weight with each.
Plain pyarrow/numpy, no Ray. Logged bandit feedback with one action per round (Open Bandit
Dataset) is evaluated by :mod:`training.evaluation.ope.estimators`; the ``raycart ope`` command
is :mod:`training.commands.ope`.

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

import numpy as np
import pyarrow as pa

from training.evaluation.ope.estimators import ci95, effective_sample_size, ratio_samples
from training.models.bandit import REWARDS


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
    logged_value: dict[str, float | list[float]] = {"value": float(logged.mean()) if n else float("nan")}
    out: dict[str, object] = {"requests": int(n), "impressions": int(impressions.num_rows),
                              "events": int(events.num_rows), "logged": logged_value}
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
    g: dict[str, float | list[float]] = {
        "requests": int(used.sum()),
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
        logged_value["value_95ci"] = ci95(logged[lg].mean(1))
    return out
