"""Retraining from the log, closed: a simulated day of traffic, `raycart retrain`, then the next day
with the retrained model vs the serving one.

1. **Day 1**: simulated shoppers (:mod:`serving.simulator`) against the live app serving the synthetic
   shop's models (``raycart demo --dataset shop``'s, trained or reused); their tastes drift after
   ``--drift-after`` rounds, so the log holds what they want now.
2. **Retrain** (:func:`serving.retrain.retrain`): merge the log, warm-start the ranker, gate; its
   wall time is the "decision in under 10 minutes" target.
3. **Day 2**, two arms (own apps and logs) with the drifted tastes from the first
   round, both going on from day 1's real-time user state and policy: ``retrain off`` (the serving
   model and data) and ``retrain on`` (the candidate and the merged data, as ``retrain`` promotes
   them -- whatever the gate decided: the point is to measure it). CTR and the share of shown items
   in the shopper's current taste, per round.

Prints tables, writes ``benchmarks/results/retrain_loop.json`` and ``retrain_loop.png``.

    .venv/bin/python benchmarks/retrain_loop.py [--shoppers 200 --day1-rounds 6 --day2-rounds 4]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="raycart-work")
    p.add_argument("--shoppers", type=int, default=200)
    p.add_argument("--day1-rounds", type=int, default=6)
    p.add_argument("--drift-after", type=int, default=2)
    p.add_argument("--day2-rounds", type=int, default=4)
    p.add_argument("--epochs", type=int, default=3, help="retrain epochs")
    p.add_argument("--out", default="benchmarks/results/retrain_loop.json")
    a = p.parse_args()

    from shop_app import app_args, shop_models, start_serve
    from shop_app import deploy as shop_deploy

    from serving.retrain import RetrainJob, retrain
    from serving.simulator import Shop, SimConfig, simulate

    data, ranker, _ = shop_models(a.workdir)
    from ray import serve

    shop = Shop.load(str(data))
    work = Path(tempfile.mkdtemp(prefix="raycart-retrain-loop-"))
    url = start_serve()

    def deploy(name: str, model: str, data_dir: Path | str = data, carry: Path | None = None) -> dict:
        root = work / name
        if carry is not None:  # day 2 goes on from day 1: its real-time user state and learned policy
            shutil.copytree(carry / "state", root / "state")
            shutil.copy(carry / "policy.npz", root / "policy.npz")
        args = app_args(root, model, data_dir)
        shop_deploy(url, args)
        return args

    results: dict = {"machine": f"{platform.machine()}, 2 cores", "date": time.strftime("%Y-%m-%d"),
                     "model": ranker, "command": "python benchmarks/retrain_loop.py " + " ".join(sys.argv[1:])}
    try:
        day1 = SimConfig(rounds=a.day1_rounds, drift_after=a.drift_after, shoppers=a.shoppers)
        print(f"\n[retrain-loop] day 1: {a.day1_rounds} rounds, tastes drift after {a.drift_after}", flush=True)
        args = deploy("day1", ranker)
        results["day1"] = simulate(url, shop, day1)
        serve.delete("raycart")  # graceful: the feedback log is published
        print("\n[retrain-loop] retrain from day 1's log", flush=True)
        t0 = time.time()
        report = retrain(RetrainJob(feedback=args["feedback_root"], data=str(data), model=ranker,
                                    work=str(work / "retrain"), epochs=a.epochs, workers=1, bootstrap=500))
        results["retrain"] = {"seconds": round(time.time() - t0, 1), "decision": report["decision"],
                              "metrics": report.get("metrics"), "ope": report.get("ope"),
                              "feedback": report["feedback"], "report": report["report"]}
        candidate = report.get("candidate")
        day2 = SimConfig(rounds=a.day2_rounds, drift_after=0, shoppers=a.shoppers)  # the drifted tastes throughout
        results["day2"] = {}
        # off: the serving model and data; on: the candidate with the merged data (as retrain promotes
        # it). Both carry day 1's real-time state and policy, as the running app would.
        for arm, model, data_dir in (("retrain off", ranker, data), ("retrain on", candidate, report.get("data"))):
            if model is None:
                continue
            print(f"\n[retrain-loop] day 2, {arm}", flush=True)
            deploy(f"day2-{arm.replace(' ', '-')}", model, data_dir, carry=work / "day1")
            results["day2"][arm] = simulate(url, shop, day2)
            serve.delete("raycart")
    finally:
        serve.shutdown()
    results["sim"] = {"day1": asdict(day1), "day2": asdict(day2)}
    print(f"\nretrain: {results['retrain']['seconds']} s, decision "
          f"{'PROMOTE' if results['retrain']['decision']['promote'] else 'KEEP'}")
    for r in results["retrain"]["decision"]["reasons"]:
        print(f"  - {r}")
    print(f"\n{'day 2':<12} {'CTR':>7} {'taste share (per round)':>40} {'failed':>7}")
    for arm, res in results["day2"].items():
        shares = " ".join(f"{r['taste_share']:.3f}" for r in res["rounds"])
        print(f"{arm:<12} {res['summary']['ctr']:>7.4f} {shares:>40} {res['summary']['failed_requests']:>7}")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    plot(results, out.with_suffix(".png"))
    print(f"\n-> {out}, {out.with_suffix('.png')}")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for arm, res in results["day2"].items():
        ax.plot(range(1, len(res["rounds"]) + 1), [r["taste_share"] for r in res["rounds"]], marker="o", label=arm)
    chance = [r["chance_share"] for r in next(iter(results["day2"].values()))["rounds"]]
    ax.plot(range(1, len(chance) + 1), chance, ls=":", color="grey", label="chance")
    ax.set_xlabel("day-2 round")
    ax.set_ylabel("shown items in the current taste")
    ax.set_title("Retrained on day 1's log vs the serving model")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
