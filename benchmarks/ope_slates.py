"""Slate IPS vs per-slot (independent-item) IPS on the serving log's greedy target, with a known truth.

The setting of ``tests/unit/training/evaluation/ope/test_serving_log.py`` (its simulator is reused, so the
numbers are the test's): a real epsilon-greedy LinUCB (frozen) fills 3 slots from 10 items; the shopper scans the slots and
clicks the first item that attracts them, then stops (at most one click). The greedy slate's
value is known in closed form. Over ``--seeds`` logs per epsilon: each estimator's mean, its
standard error, and how often the slate estimator's bootstrap 95 % interval holds the truth. The
pseudo-inverse estimator (:mod:`training.evaluation.ope.slate_pi`, the logger's slate distribution
enumerated) is shown too. A cascade is not additive over slots, PI's assumption; its bias is the
part of the reward that no additive function captures, evaluated at the target: small for this
target (the logger's own greedy slate), +8.9 % for a target that reorders the candidates
(:func:`reordered_target`, the setting of ``tests/unit/training/evaluation/ope/test_slate_pi.py``).

    .venv/bin/python benchmarks/ope_slates.py

Writes ``benchmarks/results/ope_slates.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "unit" / "training" / "evaluation" / "ope"))  # the tests' simulators

from test_serving_log import GREEDY_TRUTH, _cascade  # noqa: E402

from training.evaluation.ope.estimators import effective_sample_size  # noqa: E402
from training.evaluation.ope.serving_log import off_policy_value  # noqa: E402
from training.evaluation.ope.slate_pi import (  # noqa: E402
    epsilon_greedy_slates,
    moment_matrix,
    pseudo_inverse_value,
    target_marginals,
)


def _pi(imp, events, epsilon: float, seed: int) -> dict:
    """PI of the greedy slate from one cascade log (items ``i<j>`` are the logger's rank ``j``)."""
    slates, prob = epsilon_greedy_slates(10, 3, epsilon)
    order = np.lexsort((imp["position"].to_numpy(), np.array(imp["request_id"].to_pylist())))
    items = np.array([int(x[1:]) for x in imp["item_id"].to_pylist()])[order].reshape(-1, 3)
    rids = np.array(imp["request_id"].to_pylist())[order].reshape(-1, 3)[:, 0]
    clicked = set(events["request_id"].to_pylist())
    rewards = np.array([float(r in clicked) for r in rids])
    return pseudo_inverse_value(rewards, items, target_marginals(np.arange(10), 3, 0.0),
                                moment_matrix(slates, prob, 10), bootstrap=300, seed=seed)


def reordered_target(seeds: int, requests: int) -> list[dict]:
    """PI vs slate IPS for a target that reorders the candidates
    (``tests/unit/training/evaluation/ope/test_slate_pi.py``'s setting: 6 candidates, 3 slots, logger epsilon 0.5, greedy target by true attraction), with an
    additive reward (independent clicks, position factor) and with a cascade (one click at most)."""
    import test_slate_pi as t

    slates, prob = epsilon_greedy_slates(t.M, t.L, t.EPS)
    gamma = moment_matrix(slates, prob, t.M)
    q = target_marginals(t.TARGET, t.L, 0.0)
    target_slate = t.TARGET[slates[:1]]
    rows = []
    for cascade in (False, True):
        truth = t._truth(target_slate, np.ones(1), cascade)
        pis, ips, ess = [], [], []
        for seed in range(seeds):
            _, _, logged, rewards = t._log(requests, seed, cascade)
            pis.append(pseudo_inverse_value(rewards, logged, q, gamma, bootstrap=300, seed=seed))
            values, w = t._slate_ips(logged, rewards, target_slate, np.ones(1), slates, prob)
            boot = np.random.default_rng(seed).integers(0, len(values), (300, len(values)))
            ips.append((float(values.mean()), *np.percentile(values[boot].mean(1), [2.5, 97.5])))
            ess.append(effective_sample_size(w))
        pi = np.array([p["value"] for p in pis])
        rows.append({"reward": "cascade" if cascade else "additive", "truth": truth, "seeds": seeds,
                     "requests": requests, "pi_mean": float(pi.mean()), "pi_bias": float(pi.mean() / truth - 1),
                     "pi_covered": int(sum(p["ci95"][0] <= truth <= p["ci95"][1] for p in pis)),
                     "pi_ci_width": float(np.mean([p["ci95"][1] - p["ci95"][0] for p in pis])),
                     "pi_ess_mean": float(np.mean([p["effective_sample_size"] for p in pis])),
                     "slate_ips_mean": float(np.mean([x[0] for x in ips])),
                     "slate_ips_covered": int(sum(lo <= truth <= hi for _, lo, hi in ips)),
                     "slate_ips_ci_width": float(np.mean([hi - lo for _, lo, hi in ips])),
                     "slate_ess_mean": float(np.mean(ess))})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ope_slates.json"))
    a = ap.parse_args()
    rows, t0 = [], time.time()
    for epsilon in (0.3, 0.5):
        logs = [_cascade(epsilon, a.requests, s) for s in range(a.seeds)]
        res = [off_policy_value(*log, bootstrap=300, seed=s)["greedy"] for s, log in enumerate(logs)]
        pis = [_pi(*log, epsilon, s) for s, log in enumerate(logs)]
        pi = np.array([p["value"] for p in pis])
        slate, iips = np.array([g["ips"] for g in res]), np.array([g["iips"] for g in res])
        covered = sum(g["ips_95ci"][0] <= GREEDY_TRUTH <= g["ips_95ci"][1] for g in res)
        rows.append({"epsilon": epsilon, "truth": GREEDY_TRUTH, "seeds": a.seeds, "requests": a.requests,
                     "slate_ips_mean": float(slate.mean()), "slate_ips_se": float(slate.std(ddof=1) / np.sqrt(a.seeds)),
                     "slate_ips_covered": int(covered),
                     "iips_mean": float(iips.mean()), "iips_se": float(iips.std(ddof=1) / np.sqrt(a.seeds)),
                     "iips_overstatement": float(iips.mean() / GREEDY_TRUTH - 1),
                     "slate_ess_mean": float(np.mean([g["effective_sample_size"] for g in res])),
                     "pi_mean": float(pi.mean()), "pi_se": float(pi.std(ddof=1) / np.sqrt(a.seeds)),
                     "pi_covered": int(sum(p["ci95"][0] <= GREEDY_TRUTH <= p["ci95"][1] for p in pis)),
                     "pi_overstatement": float(pi.mean() / GREEDY_TRUTH - 1),
                     "pi_ess_mean": float(np.mean([p["effective_sample_size"] for p in pis]))})
    print(f"{'epsilon':>7} {'truth':>6} {'slate IPS':>16} {'CI covers':>10} {'per-slot IPS':>16} {'overstates':>10} "
          f"{'PI (additive)':>16} {'CI covers':>10} {'overstates':>10}")
    for r in rows:
        print(f"{r['epsilon']:>7} {r['truth']:>6.3f} {r['slate_ips_mean']:>9.4f} ± {r['slate_ips_se']:.4f} "
              f"{r['slate_ips_covered']:>6}/{r['seeds']:<3} {r['iips_mean']:>9.4f} ± {r['iips_se']:.4f} "
              f"{r['iips_overstatement']:>+9.1%} {r['pi_mean']:>9.4f} ± {r['pi_se']:.4f} "
              f"{r['pi_covered']:>6}/{r['seeds']:<3} {r['pi_overstatement']:>+9.1%}")
    reordered = reordered_target(a.seeds, a.requests)
    print(f"\nreordered target ({a.seeds} logs of {a.requests}): {'reward':>9} {'truth':>6} {'PI':>8} {'bias':>7} "
          f"{'covers':>7} {'CI width':>8} {'ESS':>7} | {'slate IPS':>9} {'covers':>7} {'CI width':>8} {'ESS':>6}")
    for r in reordered:
        print(f"{'':>38} {r['reward']:>9} {r['truth']:>6.3f} {r['pi_mean']:>8.4f} {r['pi_bias']:>+7.1%} "
              f"{r['pi_covered']:>4}/{r['seeds']:<2} {r['pi_ci_width']:>8.3f} {r['pi_ess_mean']:>7.1f} | "
              f"{r['slate_ips_mean']:>9.4f} {r['slate_ips_covered']:>4}/{r['seeds']:<2} {r['slate_ips_ci_width']:>8.3f} "
              f"{r['slate_ess_mean']:>6.1f}")
    out = {"benchmark": "ope_slates", "date": time.strftime("%Y-%m-%d"),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores", "command": "python benchmarks/ope_slates.py",
           "seconds": round(time.time() - t0, 1), "rows": rows, "reordered_target": reordered}
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
