"""Retraining from the log, closed: a simulated day of traffic, `raycart retrain`, then the next day
with the retrained model vs the serving one.

1. **Day 1**: simulated shoppers (:mod:`serving.commands.simulator`) against the live app serving the synthetic
   shop's models (``raycart demo --dataset shop``'s, trained or reused); their tastes drift after
   ``--drift-after`` rounds, so the log holds what they want now.
2. **Retrain** (:func:`serving.jobs.retrain.retrain`): merge the log, warm-start the ranker, gate; its
   wall time is the "decision in under 10 minutes" target.
3. **Promotion under load**: the serving app with clients streaming ``/recommend`` while
   ``retrain``'s promotion redeploys it with the candidate and the merged data: failed requests,
   latency during the rollout, how long until every answer is the new version.
4. **Day 2**, two arms (own apps and logs) with the drifted tastes from the first
   round, both going on from day 1's real-time user state and policy: ``retrain off`` (the serving
   model and data) and ``retrain on`` (the candidate and the merged data, as ``retrain`` promotes
   them -- whatever the gate decided: the point is to measure it). CTR and the share of shown items
   in the shopper's current taste, per round.

The whole loop runs for ``--seeds`` simulator seeds (the mean and standard error of the paired
day-2 difference), with shoppers who look at lower slots less (``--position-decay``), so the
retrain's examination estimate can be checked against the truth.

Prints tables, writes ``benchmarks/results/retrain_loop.json`` and ``retrain_loop.png``.

    .venv/bin/python benchmarks/retrain_loop.py [--seeds 3 --shoppers 200 --day1-rounds 6 --day2-rounds 4]
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
    p.add_argument("--seeds", type=int, default=3, help="repeat the whole loop with these many simulator seeds")
    p.add_argument("--position-decay", type=float, default=0.5,
                   help="shoppers look at slot j with probability 1/(1+j)^decay")
    p.add_argument("--out", default="benchmarks/results/retrain_loop.json")
    a = p.parse_args()

    from ray import serve
    from shop_app import shop_models, start_serve

    from serving.commands.simulator import Shop

    data, ranker, _ = shop_models(a.workdir)
    shop = Shop.load(str(data))
    url = start_serve()
    results: dict = {"machine": f"{platform.machine()}, 2 cores", "date": time.strftime("%Y-%m-%d"),
                     "model": ranker, "command": "python benchmarks/retrain_loop.py " + " ".join(sys.argv[1:]),
                     "position_decay": a.position_decay, "seeds": []}
    try:
        for seed in range(a.seeds):
            print(f"\n[retrain-loop] ===== seed {seed + 1}/{a.seeds} =====", flush=True)
            results["seeds"].append(one_loop(a, seed, url, shop, data, ranker))
    finally:
        serve.shutdown()
    results["summary"] = summarize(results["seeds"])
    print_tables(results)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    plot(results, out.with_suffix(".png"))
    print(f"\n-> {out}, {out.with_suffix('.png')}")


def one_loop(a: argparse.Namespace, seed: int, url: str, shop, data: Path, ranker: str) -> dict:
    """Day 1, retrain, promotion under load, day 2 with retrain off / on, for one simulator seed."""
    from ray import serve
    from shop_app import app_args
    from shop_app import deploy as shop_deploy

    from serving.commands.simulator import SimConfig, simulate
    from serving.jobs.retrain import RetrainJob, retrain

    work = Path(tempfile.mkdtemp(prefix="raycart-retrain-loop-"))

    def deploy(name: str, model: str, data_dir: Path | str = data, carry: Path | None = None) -> dict:
        root = work / name
        if carry is not None:  # day 2 goes on from day 1: its real-time user state and learned policy
            shutil.copytree(carry / "state", root / "state")
            shutil.copy(carry / "policy.npz", root / "policy.npz")
        args = app_args(root, model, data_dir)
        shop_deploy(url, args)
        return args

    res: dict = {"seed": seed}
    day1 = SimConfig(rounds=a.day1_rounds, drift_after=a.drift_after, shoppers=a.shoppers, seed=seed,
                     position_decay=a.position_decay)
    print(f"\n[retrain-loop] day 1: {a.day1_rounds} rounds, tastes drift after {a.drift_after}", flush=True)
    args = deploy("day1", ranker)
    res["day1"] = simulate(url, shop, day1)
    serve.delete("raycart")  # graceful: the feedback log is published
    print("\n[retrain-loop] retrain from day 1's log", flush=True)
    t0 = time.time()
    report = retrain(RetrainJob(feedback=args["feedback_root"], data=str(data), model=ranker,
                                work=str(work / "retrain"), epochs=a.epochs, workers=1, bootstrap=500))
    res["retrain"] = {"seconds": round(time.time() - t0, 1), "decision": report["decision"],
                      "metrics": report.get("metrics"), "ope": report.get("ope"), "exposure": report.get("exposure"),
                      "training": report.get("training"), "feedback": report["feedback"], "report": report["report"]}
    candidate = report.get("candidate")
    day2 = SimConfig(rounds=a.day2_rounds, drift_after=0, shoppers=a.shoppers, seed=seed,
                     position_decay=a.position_decay)  # the drifted tastes throughout
    if candidate is not None:
        print("\n[retrain-loop] promotion under load", flush=True)
        served = deploy("promotion", ranker, data, carry=work / "day1")
        res["promotion"] = promotion_under_load(url, served, work, candidate, report, list(shop.tastes))
        serve.delete("raycart")
    res["day2"] = {}
    # off: the serving model and data; on: the candidate with the merged data (as retrain promotes
    # it). Both carry day 1's real-time state and policy, as the running app would.
    for arm, model, data_dir in (("retrain off", ranker, data), ("retrain on", candidate, report.get("data"))):
        if model is None:
            continue
        print(f"\n[retrain-loop] day 2, {arm}", flush=True)
        deploy(f"day2-{arm.replace(' ', '-')}", model, data_dir, carry=work / "day1")
        res["day2"][arm] = simulate(url, shop, day2)
        serve.delete("raycart")
    res["sim"] = {"day1": asdict(day1), "day2": asdict(day2)}
    return res


def promotion_under_load(url: str, served: dict, work: Path, candidate: str, report: dict, users: list[str],
                         clients: int = 4) -> dict:
    """Clients stream ``/recommend`` while ``retrain``'s promotion redeploys the app with the
    candidate and the merged data: failed requests, latency percentiles during the rollout, and
    how long until every answer comes from the new version."""
    import threading

    import numpy as np
    import requests

    from serving.jobs.retrain import promote

    users = users[:clients]
    app_args = work / "promotion-app-args.json"
    app_args.write_text(json.dumps(served))
    answers: list[tuple[float, int, str | None, float]] = []
    stop = threading.Event()

    def client(user: str) -> None:
        while not stop.is_set():
            t = time.time()
            try:
                r = requests.post(url + "/recommend", json={"user_id": user, "k": 10}, timeout=60)
                answers.append((t, r.status_code, r.json().get("model_version") if r.ok else None, time.time() - t))
            except requests.RequestException:
                answers.append((t, 0, None, time.time() - t))

    threads = [threading.Thread(target=client, args=(u,), daemon=True) for u in users]
    for th in threads:
        th.start()
    time.sleep(3)
    t0 = time.time()
    promote(str(app_args), candidate, report["version"], report["data"])
    deadline = time.time() + 120
    while time.time() < deadline and not (len(answers) > clients
                                          and all(x[2] == report["version"] for x in answers[-clients:])):
        time.sleep(0.2)
    switched = time.time()
    time.sleep(2)
    stop.set()
    for th in threads:
        th.join()
    during = [x for x in answers if x[0] >= t0 and x[0] <= switched]
    lat = np.array([x[3] for x in during]) * 1000
    before = np.array([x[3] for x in answers if x[0] < t0]) * 1000
    out = {"clients": clients, "requests": len(answers), "failed": sum(x[1] != 200 for x in answers),
           "requests_during_rollout": len(during), "rollout_seconds": round(switched - t0, 1),
           "p50_ms_before": float(np.percentile(before, 50)) if len(before) else None,
           "p50_ms_during": float(np.percentile(lat, 50)) if len(lat) else None,
           "p99_ms_during": float(np.percentile(lat, 99)) if len(lat) else None,
           "last_version": answers[-1][2] if answers else None}
    print(f"[retrain-loop] promotion: {out['requests']} requests, {out['failed']} failed, rollout "
          f"{out['rollout_seconds']} s, p50 {out['p50_ms_before']:.0f} ms before / {out['p50_ms_during']:.0f} ms "
          f"during, p99 during {out['p99_ms_during']:.0f} ms", flush=True)
    return out


def summarize(seeds: list[dict]) -> dict:
    """Mean and standard error over seeds of day 2's CTR and last-round taste share per arm, and
    of the paired difference (on - off)."""
    import numpy as np

    def stat(values: list[float]) -> dict:
        v = np.array(values, dtype=float)
        return {"mean": float(v.mean()), "se": float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else None,
                "values": [float(x) for x in v]}

    paired = [s for s in seeds if len(s["day2"]) == 2]
    out: dict = {"seeds": len(seeds), "promoted": sum(bool(s["retrain"]["decision"]["promote"]) for s in seeds),
                 "retrain_seconds": stat([s["retrain"]["seconds"] for s in seeds])}
    for arm in ("retrain off", "retrain on"):
        rows = [s["day2"][arm]["summary"] for s in paired]
        out[arm] = {"ctr": stat([r["ctr"] for r in rows]), "last_taste_share": stat([r["drift_share_last"] for r in rows])}
    out["difference"] = {
        "ctr": stat([s["day2"]["retrain on"]["summary"]["ctr"] - s["day2"]["retrain off"]["summary"]["ctr"]
                     for s in paired]),
        "last_taste_share": stat([s["day2"]["retrain on"]["summary"]["drift_share_last"]
                                  - s["day2"]["retrain off"]["summary"]["drift_share_last"] for s in paired])}
    promos = [s["promotion"] for s in seeds if "promotion" in s]
    if promos:
        out["promotion"] = {"failed": sum(p["failed"] for p in promos), "requests": sum(p["requests"] for p in promos),
                            "rollout_seconds": stat([p["rollout_seconds"] for p in promos]),
                            "p99_ms_during": stat([p["p99_ms_during"] for p in promos if p["p99_ms_during"] is not None])}
    thetas = [s["retrain"]["exposure"]["examination"].get("theta") for s in seeds if s["retrain"].get("exposure")]
    out["theta_estimated"] = [t for t in thetas if t]
    return out


def print_tables(results: dict) -> None:
    sm = results["summary"]
    print(f"\n{'seed':>4} {'retrain s':>9} {'decision':>9} {'lists':>6} {'CTR off':>8} {'CTR on':>8} "
          f"{'share off':>9} {'share on':>9} {'promo failed':>12} {'rollout s':>9}")
    for s in results["seeds"]:
        d2, pr = s["day2"], s.get("promotion", {})
        off, on = d2.get("retrain off", {}).get("summary", {}), d2.get("retrain on", {}).get("summary", {})
        print(f"{s['seed']:>4} {s['retrain']['seconds']:>9} {'PROMOTE' if s['retrain']['decision']['promote'] else 'KEEP':>9} "
              f"{(s['retrain'].get('exposure') or {}).get('lists', 0):>6} {off.get('ctr', float('nan')):>8.4f} "
              f"{on.get('ctr', float('nan')):>8.4f} {off.get('drift_share_last', float('nan')):>9.3f} "
              f"{on.get('drift_share_last', float('nan')):>9.3f} {pr.get('failed', '-'):>12} {pr.get('rollout_seconds', '-'):>9}")
    d = sm["difference"]
    print(f"\nday 2, on - off over {sm['seeds']} seeds: CTR {d['ctr']['mean']:+.4f} ± {d['ctr']['se'] or 0:.4f}, "
          f"last-round taste share {d['last_taste_share']['mean']:+.4f} ± {d['last_taste_share']['se'] or 0:.4f}")
    if "promotion" in sm:
        print(f"promotion under load: {sm['promotion']['failed']} failed of {sm['promotion']['requests']} requests")
    decay = results["position_decay"]
    print(f"examination: true 1/(1+j)^{decay} = {[round((1 + j) ** -decay, 3) for j in range(10)]}")
    for t in sm["theta_estimated"]:
        print(f"             estimated {t}")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    colours = {"retrain off": "tab:blue", "retrain on": "tab:orange"}
    for i, seed in enumerate(results["seeds"]):
        for arm, res in seed["day2"].items():
            ax.plot(range(1, len(res["rounds"]) + 1), [r["taste_share"] for r in res["rounds"]], marker="o",
                    color=colours[arm], alpha=0.7, label=arm if i == 0 else None)
    first = results["seeds"][0]["day2"]
    chance = [r["chance_share"] for r in next(iter(first.values()))["rounds"]]
    ax.plot(range(1, len(chance) + 1), chance, ls=":", color="grey", label="chance")
    ax.set_xlabel("day-2 round")
    ax.set_ylabel("shown items in the current taste")
    ax.set_title(f"Retrained on day 1's log vs the serving model ({len(results['seeds'])} seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
