"""Closed-loop benchmark: simulated shoppers (:mod:`serving.commands.simulator`) against the live Serve app.

Arms, each a fresh app (own feedback log, policy and user state) on the same trained models,
run one after the other in this one process on 127.0.0.1:

* ``learning``: real-time user state + the learning policy (the defaults);
* ``no learning``: the same app with ``realtime_state`` and ``policy_learning`` off;
* ``learning without exploration``: as ``learning`` with the exploration floor at 0 (its cost);
* ``learning on redis``: as ``learning`` with the Redis user-state backend (a local redis-server).

Then the latency cost of real-time state: closed-loop ``/recommend`` load (the load generator of
``benchmarks/serve_load.py``) at 1 and 16 clients with the state on (embedded, Redis) and off.

The models are the synthetic shop's of ``raycart demo --dataset shop`` (trained, or reused from
its cache). Prints tables, writes ``benchmarks/results/closed_loop.json`` and ``closed_loop.png``.

    .venv/bin/python benchmarks/closed_loop.py
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

ARMS = {
    "learning": {},
    "no learning": {"realtime_state": False, "policy_learning": False},
    "learning without exploration": {"policy_epsilon": 0.0},
    "learning on redis": {"user_state": "redis"},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="raycart-work", help="where the demo keeps data and models")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--drift-after", type=int, default=4)
    p.add_argument("--shoppers", type=int, default=200)
    p.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of: " + ", ".join(ARMS))
    p.add_argument("--latency-seconds", type=float, default=10.0, help="per load level (0: skip)")
    p.add_argument("--app-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="override an AppArgs field in every arm (e.g. policy_diversity=0.5)")
    p.add_argument("--out", default="benchmarks/results/closed_loop.json")
    a = p.parse_args()

    from serve_load import run_level
    from shop_app import app_args as shop_app_args
    from shop_app import deploy as shop_deploy
    from shop_app import shop_models, start_serve

    from serving.commands.simulator import Shop, SimConfig, simulate
    from serving.state.redis_server import LocalRedis

    data, ranker, metrics = shop_models(a.workdir)
    from ray import serve

    from serving.core.catalog import Catalog

    shop = Shop.load(str(data))
    work = Path(tempfile.mkdtemp(prefix="raycart-loop-"))
    redis = LocalRedis(work / "redis").start()
    url = start_serve()
    overrides = dict(kv.split("=", 1) for kv in a.app_arg)
    cfg = SimConfig(rounds=a.rounds, drift_after=a.drift_after, shoppers=a.shoppers)

    def app_args(name: str, **extra) -> dict:
        root = Path(tempfile.mkdtemp(prefix=name.replace(" ", "-") + "-", dir=work))  # fresh state per arm
        return shop_app_args(root, ranker, data, **{"redis_url": redis.url, **overrides, **extra})

    def deploy(args: dict) -> None:
        shop_deploy(url, args)

    results: dict = {"machine": f"{platform.machine()}, {platform.processor() or ''} 2 cores".strip(),
                     "date": time.strftime("%Y-%m-%d"), "model": ranker, "model_metrics": metrics,
                     "sim": asdict(cfg), "app_args": overrides, "arms": {}, "latency": []}
    try:
        for arm in [x.strip() for x in a.arms.split(",") if x.strip()]:
            if arm not in ARMS:
                raise SystemExit(f"--arms: unknown arm {arm!r} (known: {', '.join(ARMS)})")
            print(f"\n[closed-loop] arm '{arm}'", flush=True)
            if ARMS[arm].get("user_state") == "redis":
                redis.stop()
                redis = LocalRedis(tempfile.mkdtemp(prefix="redis-", dir=work)).start()
            deploy(app_args(arm, **ARMS[arm]))
            results["arms"][arm] = simulate(url, shop, replace(cfg))
            results["arms"][arm]["policy_memory"] = serve.get_deployment_handle("Policy", "raycart").memory.remote(
            ).result()
            serve.delete("raycart")
        if a.latency_seconds > 0:
            import redis as redis_client

            redis_client.Redis.from_url(redis.url).flushdb()  # the arms' state is not the latency runs'
            users = list(Catalog.load(str(data)).user_index)
            for name, extra in [("state off", {"realtime_state": False}), ("state embedded", {}),
                                ("state redis", {"user_state": "redis"})]:
                deploy(app_args(f"latency-{name}", **extra))
                run_level(url, users, 2, 3.0)  # warm-up
                for c in (1, 16):
                    row = {"setup": name, **run_level(url, users, c, a.latency_seconds)}
                    results["latency"].append(row)
                    print(f"[latency] {name:<15} c={c:<3} p50 {row['p50_ms']:6.1f} ms  p99 {row['p99_ms']:6.1f} ms  "
                          f"{row['throughput_rps']:5.1f} req/s  errors {row['errors']}", flush=True)
                serve.delete("raycart")
    finally:
        serve.shutdown()
        redis.stop()
    summarize(results)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str))
    plot(results, out.with_suffix(".png"))
    print(f"\n-> {out}, {out.with_suffix('.png')}")


def summarize(results: dict) -> None:
    arms = results["arms"]
    print("\n| arm | stationary share (chance) | last drift round (chance) | rounds to 80 % | CTR | reward/item "
          "| failed |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in arms.items():
        s = r["summary"]
        print(f"| {name} | {s['stationary_share']:.3f} ({s['stationary_chance']:.3f}) | {s['drift_share_last']:.3f} "
              f"({s['drift_chance']:.3f}) | {s['rounds_to_recover'] or 'no'} | {s['ctr']:.4f} | "
              f"{s['reward_per_item']:.4f} | {s['failed_requests']} |")
    if "learning" in arms and "learning without exploration" in arms:
        a, b = arms["learning"]["summary"]["ctr"], arms["learning without exploration"]["summary"]["ctr"]
        results["exploration_cost_ctr"] = {"with_floor": a, "without": b, "relative": (a - b) / b if b else None}
        print(f"\nexploration floor: CTR {a:.4f} with vs {b:.4f} without ({(a - b) / b:+.1%})")
    lat = {(r["setup"], r["concurrency"]): r["p50_ms"] for r in results["latency"]}
    ratios = {}
    for setup in ("state embedded", "state redis"):
        for c in (1, 16):
            if (setup, c) in lat and ("state off", c) in lat:
                ratios[f"{setup} c={c}"] = lat[(setup, c)] / lat[("state off", c)]
    results["p50_ratio_vs_off"] = ratios
    for k, v in ratios.items():
        print(f"p50 {k}: {v:.2f}x the p50 with the state off")
    for name, r in arms.items():
        m = r.get("policy_memory") or {}
        if m.get("pending_requests"):
            per = m["feature_bytes"] / m["pending_requests"]
            print(f"policy memory ({name}): {m['pending_requests']:,} pending requests, "
                  f"{m['feature_bytes'] / 1e6:.1f} MB of features ({per / 1e3:.1f} KB each; "
                  f"bound {m['bound_requests']:,} requests = {per * m['bound_requests'] / 1e6:.0f} MB)")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for name, r in results["arms"].items():
        rounds = [x["round"] for x in r["rounds"]]
        axes[0].plot(rounds, [x["taste_share"] for x in r["rounds"]], marker="o", label=name)
        axes[1].plot(rounds, [x["ctr"] for x in r["rounds"]], marker="o", label=name)
    any_arm = next(iter(results["arms"].values()), None)
    if any_arm:
        rounds = [x["round"] for x in any_arm["rounds"]]
        axes[0].plot(rounds, [x["chance_share"] for x in any_arm["rounds"]], "k--", label="chance")
        drift = any_arm["config"]["drift_after"] + 0.5
        for ax in axes:
            ax.axvline(drift, color="grey", lw=0.8)
    axes[0].set(title="shown items in the shopper's current taste", xlabel="round", ylabel="share")
    axes[1].set(title="click-through rate", xlabel="round", ylabel="CTR")
    axes[0].legend(fontsize=8)
    fig.suptitle("Closed loop on the synthetic shop: tastes switch after the grey line")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
