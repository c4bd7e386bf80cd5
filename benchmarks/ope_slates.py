"""Slate IPS vs per-slot (independent-item) IPS on the serving log's greedy target, with a known truth.

The setting of ``tests/unit/test_ope.py`` (its simulator is reused, so the numbers are the test's):
a real epsilon-greedy LinUCB (frozen) fills 3 slots from 10 items; the shopper scans the slots and
clicks the first item that attracts them, then stops (at most one click). The greedy slate's
value is known in closed form. Over ``--seeds`` logs per epsilon: each estimator's mean, its
standard error, and how often the slate estimator's bootstrap 95 % interval holds the truth.

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
sys.path.insert(0, str(ROOT / "tests" / "unit"))

from test_ope import GREEDY_TRUTH, _cascade  # noqa: E402

from training.evaluation.ope import off_policy_value  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ope_slates.json"))
    a = ap.parse_args()
    rows, t0 = [], time.time()
    for epsilon in (0.3, 0.5):
        res = [off_policy_value(*_cascade(epsilon, a.requests, s), bootstrap=300, seed=s)["greedy"]
               for s in range(a.seeds)]
        slate, iips = np.array([g["ips"] for g in res]), np.array([g["iips"] for g in res])
        covered = sum(g["ips_95ci"][0] <= GREEDY_TRUTH <= g["ips_95ci"][1] for g in res)
        rows.append({"epsilon": epsilon, "truth": GREEDY_TRUTH, "seeds": a.seeds, "requests": a.requests,
                     "slate_ips_mean": float(slate.mean()), "slate_ips_se": float(slate.std(ddof=1) / np.sqrt(a.seeds)),
                     "slate_ips_covered": int(covered),
                     "iips_mean": float(iips.mean()), "iips_se": float(iips.std(ddof=1) / np.sqrt(a.seeds)),
                     "iips_overstatement": float(iips.mean() / GREEDY_TRUTH - 1),
                     "slate_ess_mean": float(np.mean([g["effective_sample_size"] for g in res]))})
    print(f"{'epsilon':>7} {'truth':>6} {'slate IPS':>16} {'CI covers':>10} {'per-slot IPS':>16} {'overstates':>10}")
    for r in rows:
        print(f"{r['epsilon']:>7} {r['truth']:>6.3f} {r['slate_ips_mean']:>9.4f} ± {r['slate_ips_se']:.4f} "
              f"{r['slate_ips_covered']:>6}/{r['seeds']:<3} {r['iips_mean']:>9.4f} ± {r['iips_se']:.4f} "
              f"{r['iips_overstatement']:>+9.1%}")
    out = {"benchmark": "ope_slates", "date": time.strftime("%Y-%m-%d"),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores", "command": "python benchmarks/ope_slates.py",
           "seconds": round(time.time() - t0, 1), "rows": rows}
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
