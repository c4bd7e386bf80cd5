"""Retraining from the log, closed: a simulated day of traffic, `raycart retrain`, then the next day
with each retrained model vs the serving one, in two scenarios.

1. **Day 1**: simulated shoppers (:mod:`serving.commands.simulator`) against the live app serving the
   synthetic shop's models (``raycart demo --dataset shop``'s, trained or reused). Scenario
   ``drift``: their tastes move after ``--drift-after`` rounds, so the log holds what they want now;
   ``steady``: they never move.
2. **Retrain** (:func:`serving.jobs.retrain.retrain`), once per variant (:data:`VARIANTS`) from the same
   log: merge it, warm-start the ranker, gate. ``retrain`` is the command's defaults; ``no exposure``
   leaves out the shown-and-skipped lists; ``recent`` fine-tunes on what is new (recency weighting,
   replay of a fraction of the older lists, learning-rate warm-up). Its wall time is the "decision in
   under 10 minutes" target.
3. **Promotion under load** (``--promotion-seeds``): the serving app with clients streaming
   ``/recommend`` while ``retrain``'s promotion redeploys it with the candidate and the merged data:
   failed requests, latency during the rollout, how long until every answer is the new version.
4. **Day 2**: the tastes as day 1 ended (moved, or the same), one arm per model, each on its own app
   and log and going on from day 1's real-time user state and policy: ``off`` (the serving model and
   data) and each variant's candidate with the merged data, as ``retrain`` promotes it -- whatever
   the gate decided: the point is to measure it. CTR and the share of shown items in the shopper's
   current taste, per round. Simulator seeds repeat the shoppers' randomness across arms (paired).

The summary gives, per scenario and variant, the paired day-2 difference (candidate - off) over
``--seeds`` (mean, standard error), also *as gated* (0 where the gate kept the serving model), and
issue 27's targets: with drift, as gated CTR >= +10 %; steady, >= -1 % (or within noise); the
default's difference above 0. Shoppers look at lower slots less (``--position-decay``), so the
retrain's examination estimate can be checked against the truth.

Prints tables, writes ``benchmarks/results/retrain_loop.json`` and ``retrain_loop.png``.

    .venv/bin/python benchmarks/retrain_loop.py [--seeds 3 --scenarios drift,steady --variants retrain,recent]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))


# the retrain variants: RetrainJob fields over its defaults. Each trains a candidate from the same
# day-1 log; day 2 runs each against the serving model ("off")
VARIANTS: dict[str, dict] = {
    "retrain": {},  # as `raycart retrain` runs by default: all lists, shown slates on
    "no exposure": {"exposure": False},  # without the shown-and-skipped lists
    # recency weighting, replay of 30 % of the older lists, warm-up, a third of the learning rate
    "recent": {"recent_weight": 5.0, "replay": 0.3, "warmup_steps": 20, "lr_scale": 0.3},
}
SCENARIOS = ("drift", "steady")  # day 1's tastes drift after --drift-after rounds / never


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="raycart-work")
    p.add_argument("--shoppers", type=int, default=200)
    p.add_argument("--day1-rounds", type=int, default=6)
    p.add_argument("--drift-after", type=int, default=2)
    p.add_argument("--day2-rounds", type=int, default=4)
    p.add_argument("--epochs", type=int, default=3, help="retrain epochs")
    p.add_argument("--seeds", type=int, default=3, help="repeat the whole loop with these many simulator seeds")
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help="comma-separated: drift (tastes move after --drift-after day-1 rounds and stay moved on "
                        "day 2), steady (they never move)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated retrain variants: " + ", ".join(
        f"{k} {v or '(defaults)'}" for k, v in VARIANTS.items()))
    p.add_argument("--promotion-seeds", type=int, default=1,
                   help="promotion under load for this many seeds of the first scenario (0: none)")
    p.add_argument("--day2-mode", choices=["inprocess", "serve"], default="inprocess",
                   help="day 2 in this process, one shopper after another (repeatable: the arms differ only by "
                        "their model), or on the live Serve app (its concurrency makes two runs of the same model "
                        "differ by several %% of CTR)")
    p.add_argument("--position-decay", type=float, default=0.5,
                   help="shoppers look at slot j with probability 1/(1+j)^decay")
    p.add_argument("--out", default="benchmarks/results/retrain_loop.json")
    a = p.parse_args()
    a.scenarios = [x.strip() for x in a.scenarios.split(",") if x.strip()]
    a.variants = [x.strip() for x in a.variants.split(",") if x.strip()]
    for name, known in (("scenarios", SCENARIOS), ("variants", VARIANTS)):
        bad = [x for x in getattr(a, name) if x not in known]
        if bad or not getattr(a, name):
            p.error(f"--{name}: unknown {bad or 'none given'} (known: {', '.join(known)})")

    from ray import serve
    from shop_app import shop_models, start_serve

    from serving.commands.simulator import Shop

    data, ranker, _ = shop_models(a.workdir)
    shop = Shop.load(str(data))
    url = start_serve()
    results: dict = {"machine": f"{platform.machine()}, 2 cores", "date": time.strftime("%Y-%m-%d"),
                     "model": ranker, "command": "python benchmarks/retrain_loop.py " + " ".join(sys.argv[1:]),
                     "position_decay": a.position_decay, "day2_mode": a.day2_mode, "variants": {v: VARIANTS[v] for v in a.variants},
                     "scenarios": {}}
    t0 = time.time()
    try:
        for scenario in a.scenarios:
            runs = []
            for seed in range(a.seeds):
                print(f"\n[retrain-loop] ===== {scenario}, seed {seed + 1}/{a.seeds} ({time.time() - t0:.0f} s) =====",
                      flush=True)
                promote = scenario == a.scenarios[0] and seed < a.promotion_seeds
                runs.append(one_loop(a, seed, scenario, promote, url, shop, data, ranker))
            results["scenarios"][scenario] = {"seeds": runs, "summary": summarize(runs, a.variants)}
    finally:
        serve.shutdown()
    results["seconds"] = round(time.time() - t0)
    results["targets"] = targets(results)
    if "drift" in results["scenarios"] and "retrain" in a.variants:  # the default scenario's headline
        results["summary"] = results["scenarios"]["drift"]["summary"]["retrain"]
    print_tables(results)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    plot(results, out.with_suffix(".png"))
    print(f"\n-> {out}, {out.with_suffix('.png')}")


def one_loop(a: argparse.Namespace, seed: int, scenario: str, promote: bool, url: str, shop, data: Path,
             ranker: str) -> dict:
    """Day 1, a retrain per variant, promotion under load (``promote``), day 2 with the serving model
    and with each candidate, for one simulator seed."""
    from ray import serve
    from shop_app import app_args
    from shop_app import deploy as shop_deploy

    from serving.commands.simulator import SimConfig, simulate
    from serving.jobs.retrain import RetrainJob, retrain

    work = Path(tempfile.mkdtemp(prefix="raycart-retrain-loop-"))

    def app(name: str, model: str, data_dir: Path | str = data, carry: Path | None = None) -> dict:
        """The app's arguments under ``work/name``; ``carry``: going on from that app's real-time
        user state and learned policy (day 2 from day 1)."""
        root = work / name
        if carry is not None:
            shutil.copytree(carry / "state", root / "state")
            shutil.copy(carry / "policy.npz", root / "policy.npz")
        return app_args(root, model, data_dir)

    def deploy(name: str, model: str, data_dir: Path | str = data, carry: Path | None = None) -> dict:
        args = app(name, model, data_dir, carry)
        shop_deploy(url, args)
        return args

    def day2_arm(name: str, model: str, data_dir: Path | str) -> dict:
        """One day-2 arm from day 1's state and policy: on Serve, or the same request path in process."""
        args = app(f"day2-{name.replace(' ', '-')}", model, data_dir, carry=work / "day1")
        if a.day2_mode == "serve":
            shop_deploy(url, args)
            try:
                return simulate(url, shop, day2)
            finally:
                serve.delete("raycart")
        from closed_loop import InProcess

        client = InProcess(args, seed=seed)
        try:
            return simulate(client, shop, replace(day2, concurrency=1))
        finally:
            client.close()

    drift = scenario == "drift"
    res: dict = {"seed": seed, "scenario": scenario}
    # steady: the tastes never move (drift_after = rounds); drift: they move on day 1 and day 2 starts moved
    day1 = SimConfig(rounds=a.day1_rounds, drift_after=a.drift_after if drift else a.day1_rounds,
                     shoppers=a.shoppers, seed=seed, position_decay=a.position_decay)
    day2 = SimConfig(rounds=a.day2_rounds, drift_after=0 if drift else a.day2_rounds, shoppers=a.shoppers,
                     seed=seed, position_decay=a.position_decay)
    print(f"\n[retrain-loop] day 1: {a.day1_rounds} rounds" + (f", tastes drift after {a.drift_after}" if drift
                                                                 else ", steady tastes"), flush=True)
    args = deploy("day1", ranker)
    res["day1"] = simulate(url, shop, day1)
    serve.delete("raycart")  # graceful: the feedback log is published
    res["retrain"], res["day2"] = {}, {}
    print("\n[retrain-loop] day 2, retrain off (the serving model)", flush=True)
    res["day2"]["off"] = day2_arm("off", ranker, data)
    for variant in a.variants:
        print(f"\n[retrain-loop] retrain from day 1's log: {variant} {VARIANTS[variant] or ''}", flush=True)
        t0 = time.time()
        report = retrain(RetrainJob(feedback=args["feedback_root"], data=str(data), model=ranker,
                                    work=str(work / "retrain" / variant.replace(" ", "-")), epochs=a.epochs,
                                    workers=1, bootstrap=500, **VARIANTS[variant]))
        res["retrain"][variant] = {
            "seconds": round(time.time() - t0, 1), "decision": report["decision"], "metrics": report.get("metrics"),
            "ope": report.get("ope"), "exposure": report.get("exposure"), "training": report.get("training"),
            "feedback": report["feedback"], "report": report["report"]}
        candidate = report.get("candidate")
        if candidate is None:
            continue
        if promote and "promotion" not in res:
            print("\n[retrain-loop] promotion under load", flush=True)
            served = deploy("promotion", ranker, data, carry=work / "day1")
            res["promotion"] = promotion_under_load(url, served, work, candidate, report, list(shop.tastes))
            serve.delete("raycart")
        # the candidate with the merged data, as retrain promotes it -- whatever the gate decided: the
        # point is to measure it. Both arms carry day 1's real-time state and policy, as the app would
        print(f"\n[retrain-loop] day 2, {variant}", flush=True)
        res["day2"][variant] = day2_arm(variant, candidate, report["data"])
    res["sim"] = {"day1": asdict(day1), "day2": asdict(day2)}
    shutil.rmtree(work, ignore_errors=True)
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


def _day2(run: dict) -> dict:
    """A day-2 arm's CTR and the taste share of its last round."""
    return {"ctr": run["summary"]["ctr"], "last_taste_share": run["rounds"][-1]["taste_share"]}


def summarize(runs: list[dict], variants: list[str]) -> dict:
    """Per variant, over seeds (mean, standard error): day 2's CTR and last-round taste share of
    the serving model ("off") and the candidate, their paired difference (candidate - off; relative
    to off's mean CTR), the difference *as gated* (0 where the gate kept the serving model: what the
    shop would have seen), how many the gate promoted, and the retrain's seconds."""
    import numpy as np
    from closed_loop import mean_se

    def stat(values: list[float]) -> dict:
        return {**mean_se(values), "values": [float(x) for x in values]}

    out: dict = {}
    for variant in variants:
        paired = [r for r in runs if variant in r["day2"]]
        if not paired:
            continue
        off = [_day2(r["day2"]["off"]) for r in paired]
        on = [_day2(r["day2"][variant]) for r in paired]
        promoted = [bool(r["retrain"][variant]["decision"]["promote"]) for r in paired]
        diff = [b["ctr"] - o["ctr"] for o, b in zip(off, on)]
        base = float(np.mean([o["ctr"] for o in off]))
        out[variant] = {
            "seeds": len(paired), "promoted": sum(promoted),
            "retrain_seconds": stat([r["retrain"][variant]["seconds"] for r in paired]),
            "retrain off": {"ctr": stat([o["ctr"] for o in off]),
                            "last_taste_share": stat([o["last_taste_share"] for o in off])},
            "retrain on": {"ctr": stat([b["ctr"] for b in on]),
                           "last_taste_share": stat([b["last_taste_share"] for b in on])},
            "difference": {"ctr": stat(diff),
                           "ctr_relative": stat([d / base for d in diff]),
                           "ctr_as_gated_relative": stat([d / base if p else 0.0 for d, p in zip(diff, promoted)]),
                           "last_taste_share": stat([b["last_taste_share"] - o["last_taste_share"]
                                                     for o, b in zip(off, on)])},
            "holdout_ndcg_difference": stat([r["retrain"][variant]["decision"]["holdout"]["difference"]
                                             for r in paired if "holdout" in r["retrain"][variant]["decision"]])}
    promos = [r["promotion"] for r in runs if "promotion" in r]
    if promos and out:
        first = next(iter(out.values()))
        first["promotion"] = {"failed": sum(p["failed"] for p in promos), "requests": sum(p["requests"] for p in promos),
                              "rollout_seconds": [p["rollout_seconds"] for p in promos],
                              "p99_ms_during": [p["p99_ms_during"] for p in promos]}
    return out


def targets(results: dict) -> dict:
    """Issue 27's retraining targets, each with its measured value and whether it is met: with
    drift, the promoted model's day-2 CTR >= +10 % over the serving model (as gated: a kept model
    counts 0); steady, the candidate's CTR not worse than -1 % unless within noise (the mean + 2 se);
    the default (drift, default retrain) CTR difference above 0."""
    out: dict = {}
    sc = results["scenarios"]
    for variant, row in (sc.get("drift", {}).get("summary") or {}).items():
        g = row["difference"]["ctr_as_gated_relative"]
        out[f"drift, {variant}: as gated CTR >= +10 %"] = {"value": g["mean"], "se": g["se"], "met": g["mean"] >= 0.10}
    for variant, row in (sc.get("steady", {}).get("summary") or {}).items():
        c = row["difference"]["ctr_relative"]
        out[f"steady, {variant}: CTR >= -1 % (or within noise)"] = {
            "value": c["mean"], "se": c["se"], "met": c["mean"] >= -0.01 or c["mean"] + 2 * (c["se"] or 0) >= 0}
    row = (sc.get("drift", {}).get("summary") or {}).get("retrain")
    if row:
        out["default: difference.ctr.mean > 0"] = {"value": row["difference"]["ctr"]["mean"],
                                                   "se": row["difference"]["ctr"]["se"],
                                                   "met": row["difference"]["ctr"]["mean"] > 0}
    return out


def print_tables(results: dict) -> None:
    for scenario, sc in results["scenarios"].items():
        print(f"\n{scenario}: per seed and variant")
        print(f"{'seed':>4} {'variant':<12} {'retrain s':>9} {'decision':>8} {'holdout dNDCG':>13} {'CTR off':>8} "
              f"{'CTR on':>8} {'share off':>9} {'share on':>9}")
        for r in sc["seeds"]:
            off = _day2(r["day2"]["off"])
            for variant, rt in r["retrain"].items():
                on = _day2(r["day2"][variant]) if variant in r["day2"] else {"ctr": float("nan"), "last_taste_share": float("nan")}
                d = rt["decision"]
                print(f"{r['seed']:>4} {variant:<12} {rt['seconds']:>9} {'PROMOTE' if d['promote'] else 'KEEP':>8} "
                      f"{d.get('holdout', {}).get('difference', float('nan')):>+13.4f} {off['ctr']:>8.4f} {on['ctr']:>8.4f} "
                      f"{off['last_taste_share']:>9.3f} {on['last_taste_share']:>9.3f}")
        print(f"\n{scenario}: candidate - off over seeds (mean ± se)")
        for variant, row in sc["summary"].items():
            d = row["difference"]
            print(f"  {variant:<12} CTR {d['ctr']['mean']:+.4f} ± {d['ctr']['se'] or 0:.4f} "
                  f"({d['ctr_relative']['mean']:+.1%}; as gated {d['ctr_as_gated_relative']['mean']:+.1%}), "
                  f"last-round share {d['last_taste_share']['mean']:+.3f} ± {d['last_taste_share']['se'] or 0:.3f}, "
                  f"promoted {row['promoted']}/{row['seeds']}")
            if "promotion" in row:
                pr = row["promotion"]
                print(f"  promotion under load: {pr['failed']} failed of {pr['requests']} requests, rollout "
                      f"{pr['rollout_seconds']} s, p99 during {[round(x or 0) for x in pr['p99_ms_during']]} ms")
    print("\ntargets")
    for name, t in results["targets"].items():
        print(f"  {'MET ' if t['met'] else 'MISS'} {name}: {t['value']:+.4f}" + (f" ± {t['se']:.4f}" if t["se"] else ""))


def plot(results: dict, path: Path) -> None:
    """Day-2 CTR per variant and scenario, candidate vs serving model, one point per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = results["scenarios"]
    fig, axes = plt.subplots(1, len(scenarios), figsize=(5 * len(scenarios), 3.5), squeeze=False)
    for ax, (scenario, sc) in zip(axes[0], scenarios.items()):
        variants = list(sc["summary"])
        for x, variant in enumerate(variants):
            row = sc["summary"][variant]
            rel = row["difference"]["ctr_relative"]
            ax.scatter([x] * len(rel["values"]), [100 * v for v in rel["values"]], color="tab:orange", alpha=0.6)
            ax.errorbar([x], [100 * rel["mean"]], yerr=[200 * (rel["se"] or 0)], fmt="D", color="black", capsize=4)
        ax.axhline(0, color="grey", lw=0.8)
        if scenario == "drift":
            ax.axhline(10, color="tab:green", ls="--", lw=0.8, label="target +10 %")
            ax.legend()
        ax.set_xticks(range(len(variants)), variants)
        ax.set_ylabel("day-2 CTR, candidate vs serving (%)")
        ax.set_title(f"{scenario} ({len(sc['seeds'])} seeds; ◆ mean ± 2 se)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
