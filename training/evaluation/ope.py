"""Off-policy evaluation from the feedback log: what the served policy earned, and what it would
have earned without exploration, from the logged propensities alone.

Every shown item is logged with its slot, the probability that the policy put it there
(``propensity``) and whether it was the policy's exploit choice (``greedy``). Rewards come from
the feedback events joined on ``(request_id, item_id)`` (:data:`~training.models.bandit.REWARDS`:
click 1, cart 2, purchase 5; the best event per shown item counts).

* ``logged``: the average reward per request under the policy that served (on-policy).
* ``greedy`` target (the same policy with its exploration switched off): per-slot inverse
  propensity scoring, ``IPS = mean over requests of sum_s r_s * [greedy_s] / p_s``, and its
  self-normalised version (SNIPS: the weighted mean reward per slot, sum w r / sum w, times the
  slots per request). Slots are treated as
  separate decisions given the slots before them (the usual slate approximation); the estimate is
  unbiased for each slot's decision, exact propensities given.

95 % intervals by bootstrap over requests. Plain pyarrow/numpy, no Ray.

>>> import pyarrow as pa
>>> imp = pa.table({"request_id": ["a", "a", "b", "b"], "item_id": ["x", "y", "x", "z"],
...                 "position": [0, 1, 0, 1], "propensity": [0.9, 0.1, 0.9, 0.9],
...                 "greedy": [True, False, True, True]})
>>> ev = pa.table({"request_id": ["a", "b"], "item_id": ["x", "z"], "event": ["click", "purchase"]})
>>> r = off_policy_value(imp, ev, bootstrap=0)
>>> r["logged"]["value"], round(r["greedy"]["ips"], 3)
(3.0, 3.333)
"""

from __future__ import annotations

import argparse

import numpy as np
import pyarrow as pa

from training.models.bandit import REWARDS


def _rewards(impressions: pa.Table, events: pa.Table) -> np.ndarray:
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
    reward = _rewards(impressions, events)
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
    w = np.where(keep & greedy, 1.0 / np.clip(prop, 1e-12, None), 0.0)
    slots = np.bincount(req_idx, weights=keep.astype(float), minlength=n)
    used = slots > 0
    slots = slots[used]
    ips_r = np.bincount(req_idx, weights=w * reward, minlength=n)[used]
    w_sum = np.bincount(req_idx, weights=w, minlength=n)[used]
    ips = float(ips_r.mean())
    snips = float(ips_r.sum() / max(w_sum.sum(), 1e-12) * slots.sum() / max(len(ips_r), 1))
    ess = float(w.sum() ** 2 / max((w ** 2).sum(), 1e-12))
    out["greedy"] = {"ips": ips, "snips": snips, "requests": int(used.sum()), "max_weight": float(w.max()),
                     "effective_sample_size": ess}
    if bootstrap:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, len(ips_r), size=(bootstrap, len(ips_r)))
        lg = rng.integers(0, n, size=(bootstrap, n))
        out["greedy"]["ips_95ci"] = [float(x) for x in np.percentile(ips_r[idx].mean(1), [2.5, 97.5])]
        out["logged"]["value_95ci"] = [float(x) for x in np.percentile(logged[lg].mean(1), [2.5, 97.5])]
    return out


def _cmd(a: argparse.Namespace) -> int:
    from training.data.feedback import read_feedback
    from training.evaluation.run import write_json

    result = off_policy_value(read_feedback(a.feedback, "impressions"), read_feedback(a.feedback, "events"))
    print(f"{result['requests']:,} requests, {result['impressions']:,} impressions, {result['events']:,} events")
    lv = result["logged"]
    print(f"logged policy: {lv['value']:.4f} reward per request"
          + (f" (95% CI {lv['value_95ci'][0]:.4f}-{lv['value_95ci'][1]:.4f})" if "value_95ci" in lv else ""))
    g = result["greedy"]
    if g is None:
        print("greedy policy: no estimate (these impressions carry no greedy flag)")
    else:
        print(f"greedy policy (no exploration), per-slot IPS: {g['ips']:.4f} (95% CI {g['ips_95ci'][0]:.4f}-"
              f"{g['ips_95ci'][1]:.4f}), SNIPS {g['snips']:.4f}; effective sample size "
              f"{g['effective_sample_size']:.0f} of {result['impressions']:,} impressions")
    if a.out:
        write_json(result, a.out)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ope", help="off-policy evaluation from the serving feedback log",
                       description="Logged reward per request and IPS/SNIPS estimates of the policy "
                                   "without exploration, from the feedback log's propensities.")
    p.add_argument("--feedback", required=True, help="feedback log root (local or s3://)")
    p.add_argument("--out", help="write the result JSON here")
    p.set_defaults(func=_cmd)
