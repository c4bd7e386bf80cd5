"""Closed-loop benchmark: simulated shoppers (:mod:`serving.commands.simulator`) against the app.

Two ways to run the same request path (``serving.core.service.RecommendService`` with its
retriever, ranker, policy and real-time user state):

* ``--mode serve`` (default): each arm a fresh Serve app on 127.0.0.1 over HTTP (own feedback log,
  policy and user state), then the latency cost of real-time state (closed-loop ``/recommend`` load
  at 1 and 16 clients with the state on, embedded and Redis, and off);
* ``--mode inprocess``: each arm the service in this process, no Ray and no HTTP (the same core
  code the Serve deployments host), fast enough for every ablation arm over several seeds and
  both simulators (``--sim default,hard``; :meth:`~serving.commands.simulator.SimConfig.hard`).

Arms (``ARMS``): ``learning`` (the defaults); ``no learning`` (real-time state and policy learning
off); one ablation per suspect of a learning loop that costs a steady shopper (MMR diversity,
excluding shown-and-ignored items, the re-exploration of a shopper who stopped engaging, the
policy's own learning, the exploration candidates, the epsilon floor); ``learning on redis``
(serve mode); and ``oracle``, the explorer that knows when tastes moved
(:class:`~serving.commands.simulator.Oracle`, exploiting at the ``no learning`` arm's stationary
share of the same seed), the ceiling each arm's drift recovery is reported against.

The models are the synthetic shop's of ``raycart demo --dataset shop`` (trained, or reused from
its cache). Prints tables, writes ``benchmarks/results/closed_loop.json`` and ``closed_loop.png``
(``--out`` names others).

    .venv/bin/python benchmarks/closed_loop.py
    .venv/bin/python benchmarks/closed_loop.py --mode inprocess --seeds 0,1,2 --sim default,hard \\
        --out benchmarks/results/closed_loop_ablations.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from serving.commands.simulator import Oracle, Shop, SimConfig, simulate
from serving.core.catalog import Catalog
from serving.core.local import LocalBackend, LocalState
from serving.core.schemas import AppArgs, FeedbackRequest, RecommendRequest
from serving.core.service import RecommendService, ServiceError, user_state_config
from serving.state.memory import MemoryUserState

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

ARMS: dict[str, dict] = {
    "learning": {},
    "no learning": {"realtime_state": False, "policy_learning": False},
    "no diversity": {"policy_diversity": 0.0},
    "no shown-ignored exclusion": {"exclude_shown": 0},
    "no re-exploration": {"stale_alpha": 0.0},
    "frozen policy": {"policy_learning": False},  # real-time state on, the bandit does not learn
    "no exploration candidates": {"explore_candidates": 0},
    "learning without exploration": {"policy_epsilon": 0.0},
    "learning on redis": {"user_state": "redis"},
    "oracle": {},  # not an app: serving.commands.simulator.Oracle
}
SERVE_ARMS = "learning,no learning,learning without exploration,learning on redis,oracle"
INPROCESS_ARMS = ",".join(a for a in ARMS if a != "learning on redis")


class InProcess:
    """The app's request path in this process: :class:`~serving.core.service.RecommendService` over
    :class:`~serving.core.local.LocalBackend` and an in-memory user state, answering the
    simulator's ``post`` as the HTTP edge would (status, body, seconds). No Ray, no HTTP."""

    def __init__(self, args: dict, served=None, seed: int = 0):
        self.args = AppArgs(**args)
        self.loop = asyncio.new_event_loop()
        self.backend = LocalBackend(self.args, offload=False, served=served)
        self.backend.retrieval.rng = np.random.default_rng(seed)  # the exploration candidates: repeatable
        state = LocalState(MemoryUserState(user_state_config(self.args), self.args.state_dir))

        async def append(table: str, records: list[dict]) -> None:  # the log is not part of this loop
            return None

        self.service = RecommendService(self.args, Catalog.load(self.args.data_dir), self.backend, state, append)
        self.lock = threading.Lock()

    def post(self, path: str, body: dict) -> tuple[int, dict, float]:
        started = time.perf_counter()
        with self.lock:
            try:
                if path == "/recommend":
                    out = self.loop.run_until_complete(self.service.recommend(RecommendRequest(**body)))
                elif path == "/feedback":
                    out = self.loop.run_until_complete(self.service.feedback(FeedbackRequest(**body)))
                else:
                    raise ValueError(path)
            except ServiceError as exc:
                return exc.status, {"detail": exc.detail}, time.perf_counter() - started
        return 200, out, time.perf_counter() - started

    def close(self) -> None:
        self.backend.policy.close()
        self.loop.close()


def _sim_config(name: str, a: argparse.Namespace, seed: int):
    base = {"rounds": a.rounds, "drift_after": a.drift_after, "shoppers": a.shoppers, "seed": seed}
    if a.mode == "inprocess":
        base["concurrency"] = 1  # one event loop: shoppers one after the other
    if name == "default":
        return SimConfig(**base)
    if name == "hard":
        return SimConfig.hard(**base)
    raise SystemExit(f"--sim: unknown simulator {name!r} (known: default, hard)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="raycart-work", help="where the demo keeps data and models")
    p.add_argument("--mode", choices=["serve", "inprocess"], default="serve")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--drift-after", type=int, default=4)
    p.add_argument("--shoppers", type=int, default=200)
    p.add_argument("--seeds", default="0", help="comma-separated simulator seeds (each arm runs each)")
    p.add_argument("--sim", default="default", help="comma-separated simulators: default, hard")
    p.add_argument("--arms", default=None, help="comma-separated subset of: " + ", ".join(ARMS)
                   + f" (default: serve mode {SERVE_ARMS!r}; inprocess every arm but redis)")
    p.add_argument("--latency-seconds", type=float, default=10.0, help="per load level, serve mode (0: skip)")
    p.add_argument("--app-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="override an AppArgs field in every arm (e.g. policy_diversity=0.5)")
    p.add_argument("--out", default="benchmarks/results/closed_loop.json")
    a = p.parse_args()
    arms = [x.strip() for x in (a.arms or (SERVE_ARMS if a.mode == "serve" else INPROCESS_ARMS)).split(",")
            if x.strip()]
    for arm in arms:
        if arm not in ARMS:
            raise SystemExit(f"--arms: unknown arm {arm!r} (known: {', '.join(ARMS)})")
    if a.mode == "inprocess" and "learning on redis" in arms:
        raise SystemExit("--arms: 'learning on redis' needs --mode serve")
    try:
        seeds = [int(x) for x in a.seeds.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"--seeds: expected comma-separated integers, got {a.seeds!r}") from None
    sims = [x.strip() for x in a.sim.split(",") if x.strip()]
    for name in sims:
        _sim_config(name, a, 0)
    overrides: dict = {}
    for kv in a.app_arg:
        if "=" not in kv:
            raise SystemExit(f"--app-arg: expected KEY=VALUE, got {kv!r}")
        key, value = kv.split("=", 1)
        overrides[key] = value
    if "oracle" in arms and "no learning" in arms:  # the oracle exploits at no learning's level
        arms = [x for x in arms if x != "oracle"] + ["oracle"]
        arms = ["no learning"] + [x for x in arms if x != "no learning"]

    from shop_app import app_args as shop_app_args
    from shop_app import shop_models

    from serving.state.redis_server import LocalRedis

    data, ranker, metrics = shop_models(a.workdir)
    shop = Shop.load(str(data))
    work = Path(tempfile.mkdtemp(prefix="raycart-loop-"))
    redis = LocalRedis(work / "redis").start() if a.mode == "serve" else None
    url = None
    if a.mode == "serve":
        from shop_app import start_serve

        url = start_serve()

    def app_args(name: str, **extra) -> dict:
        root = Path(tempfile.mkdtemp(prefix=name.replace(" ", "-") + "-", dir=work))  # fresh state per arm
        more = {"redis_url": redis.url} if redis else {}
        args = shop_app_args(root, ranker, data, **{**more, **overrides, **extra})
        try:
            AppArgs(**args)
        except Exception as exc:  # noqa: BLE001 -- a bad --app-arg names its field
            raise SystemExit(f"--app-arg: {str(exc)[:400]}") from None
        return args

    results: dict = {"machine": f"{platform.machine()}, {platform.processor() or ''} 2 cores".strip(),
                     "date": time.strftime("%Y-%m-%d"), "mode": a.mode, "model": ranker, "model_metrics": metrics,
                     "seeds": seeds, "app_args": overrides, "runs": {}, "latency": []}
    served = None
    try:
        for sim in sims:
            results["runs"][sim] = {}
            for seed in seeds:
                cfg = _sim_config(sim, a, seed)
                for arm in arms:
                    print(f"\n[closed-loop] simulator '{sim}', seed {seed}, arm '{arm}'", flush=True)
                    if arm == "oracle":
                        base = results["runs"][sim].get("no learning", {}).get(str(seed))
                        share = base["summary"]["stationary_share"] if base else 0.8
                        result = simulate(Oracle(shop, share=min(1.0, share), seed=seed), shop, cfg)
                        result["oracle_share"] = share
                    elif a.mode == "serve":
                        from ray import serve
                        from shop_app import deploy

                        if ARMS[arm].get("user_state") == "redis":
                            redis.stop()
                            redis = LocalRedis(tempfile.mkdtemp(prefix="redis-", dir=work)).start()
                        deploy(url, app_args(arm, **ARMS[arm]))
                        result = simulate(url, shop, replace(cfg))
                        result["policy_memory"] = serve.get_deployment_handle("Policy", "raycart").memory.remote(
                        ).result()
                        serve.delete("raycart")
                    else:
                        app = InProcess(app_args(arm, **ARMS[arm]), served=served, seed=seed)
                        served = app.backend.holder.served  # one model copy for every arm
                        result = simulate(app, shop, cfg)
                        app.close()
                    result["arm"] = arm
                    results["runs"][sim].setdefault(arm, {})[str(seed)] = result
        if a.mode == "serve" and a.latency_seconds > 0:
            latency(results, a, url, redis, app_args, data)
    finally:
        if a.mode == "serve":
            from ray import serve

            serve.shutdown()
        if redis:
            redis.stop()
    summarize(results)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str))
    plot(results, out.with_suffix(".png"))
    print(f"\n-> {out}, {out.with_suffix('.png')}")


def latency(results: dict, a: argparse.Namespace, url: str, redis, app_args, data) -> None:
    """``/recommend`` latency with the real-time state off, embedded and on Redis (1 and 16 clients)."""
    import redis as redis_client
    from ray import serve
    from serve_load import run_level
    from shop_app import deploy

    redis_client.Redis.from_url(redis.url).flushdb()  # the arms' state is not the latency runs'
    users = list(Catalog.load(str(data)).user_index)
    for name, extra in [("state off", {"realtime_state": False}), ("state embedded", {}),
                        ("state redis", {"user_state": "redis"})]:
        deploy(url, app_args(f"latency-{name}", **extra))
        run_level(url, users, 2, 3.0)  # warm-up
        for c in (1, 16):
            row = {"setup": name, **run_level(url, users, c, a.latency_seconds)}
            results["latency"].append(row)
            print(f"[latency] {name:<15} c={c:<3} p50 {row['p50_ms']:6.1f} ms  p99 {row['p99_ms']:6.1f} ms  "
                  f"{row['throughput_rps']:5.1f} req/s  errors {row['errors']}", flush=True)
        serve.delete("raycart")


def mean_se(values: list[float]) -> dict:
    """Mean, standard error and count of the values that are not None."""
    v = np.array([x for x in values if x is not None], dtype=float)
    if not len(v):
        return {"mean": None, "se": None, "n": 0}
    return {"mean": float(v.mean()), "se": float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0,
            "n": int(len(v))}


def arm_metrics(result: dict, oracle: dict | None) -> dict:
    """One run's numbers: stationary CTR and taste share (and their change from the first to the
    last stationary round), drift round 5 as a share of the oracle's, the last drift round as a
    share of the arm's own stationary level."""
    rounds = result["rounds"]
    stat = [r for r in rounds if r["phase"] == "stationary"]
    drift = [r for r in rounds if r["phase"] == "drift"]
    share = float(np.mean([r["taste_share"] for r in stat])) if stat else None
    d5 = drift[4]["taste_share"] if len(drift) >= 5 else None
    o5 = oracle["rounds"][len(stat) + 4]["taste_share"] if oracle and d5 is not None else None
    return {"stationary_ctr": float(np.mean([r["ctr"] for r in stat])) if stat else None,
            "stationary_share": share,
            "stationary_trend": stat[-1]["taste_share"] - stat[0]["taste_share"] if len(stat) > 1 else None,
            "stationary_ctr_trend": stat[-1]["ctr"] - stat[0]["ctr"] if len(stat) > 1 else None,
            "drift5_share": d5, "drift5_vs_oracle": d5 / o5 if d5 is not None and o5 else None,
            "drift_last_vs_own": drift[-1]["taste_share"] / share if drift and share else None,
            "ctr": result["summary"]["ctr"], "failed": result["summary"]["failed_requests"]}


def summarize(results: dict) -> None:
    """Per simulator: each arm's metrics, mean ± se over the seeds, and the issue-27 targets."""
    results["summary"] = {}
    for sim, by_arm in results["runs"].items():
        oracle = by_arm.get("oracle", {})
        table = {}
        for arm, by_seed in by_arm.items():
            per_seed = {seed: arm_metrics(r, oracle.get(seed)) for seed, r in by_seed.items()}
            table[arm] = {key: mean_se([m[key] for m in per_seed.values()]) for key in next(iter(per_seed.values()))}
            table[arm]["per_seed"] = per_seed
            table[arm]["rounds"] = [mean_se([r["rounds"][i]["taste_share"] for r in by_seed.values()])["mean"]
                                    for i in range(len(next(iter(by_seed.values()))["rounds"]))]
            table[arm]["rounds_ctr"] = [mean_se([r["rounds"][i]["ctr"] for r in by_seed.values()])["mean"]
                                        for i in range(len(next(iter(by_seed.values()))["rounds"]))]
        results["summary"][sim] = table
        n = max(x["ctr"]["n"] for x in table.values())
        print(f"\n## simulator '{sim}' ({n} seed(s); mean ± se)\n")
        print("| arm | stationary CTR | stationary share | share trend (last - first stationary) | drift round 5 "
              "| ... / oracle | last drift round / own stationary | CTR (all rounds) | failed |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")

        def f(x: dict, pct: bool = False) -> str:
            if x["mean"] is None:
                return "-"
            return f"{x['mean']:.1%} ± {x['se']:.1%}" if pct else f"{x['mean']:.4f} ± {x['se']:.4f}"

        for arm, m in table.items():
            print(f"| {arm} | {f(m['stationary_ctr'])} | {f(m['stationary_share'])} | {f(m['stationary_trend'])} | "
                  f"{f(m['drift5_share'])} | {f(m['drift5_vs_oracle'], True)} | {f(m['drift_last_vs_own'], True)} | "
                  f"{f(m['ctr'])} | {m['failed']['mean'] or 0:.0f} |")
        if "learning" in table and "no learning" in table:
            ln, nl = table["learning"], table["no learning"]
            targets = {
                "stationary_ctr_at_least_no_learning_minus_2pct":
                    ln["stationary_ctr"]["mean"] >= 0.98 * nl["stationary_ctr"]["mean"],
                "stationary_share_at_least_no_learning_minus_2pct":
                    ln["stationary_share"]["mean"] >= 0.98 * nl["stationary_share"]["mean"],
                "stationary_share_does_not_fall": ln["stationary_trend"]["mean"] >= -0.02,
            }
            if ln["drift5_vs_oracle"]["mean"] is not None:
                targets["drift_round5_at_least_85pct_of_oracle"] = ln["drift5_vs_oracle"]["mean"] >= 0.85
            if ln["drift_last_vs_own"]["mean"] is not None:
                targets["last_drift_round_at_least_80pct_of_own_stationary"] = ln["drift_last_vs_own"]["mean"] >= 0.8
            table["targets"] = targets
            for k, v in targets.items():
                print(f"target {k}: {'met' if v else 'MISSED'}")
    arms = results["runs"].get("default", {})
    if "learning" in arms and "learning without exploration" in arms:
        a = mean_se([r["summary"]["ctr"] for r in arms["learning"].values()])["mean"]
        b = mean_se([r["summary"]["ctr"] for r in arms["learning without exploration"].values()])["mean"]
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
    for name, by_seed in arms.items():
        m = next(iter(by_seed.values())).get("policy_memory") or {}
        if m.get("pending_requests"):
            per = m["feature_bytes"] / m["pending_requests"]
            print(f"policy memory ({name}): {m['pending_requests']:,} pending requests, "
                  f"{m['feature_bytes'] / 1e6:.1f} MB of features ({per / 1e3:.1f} KB each; "
                  f"bound {m['bound_requests']:,} requests = {per * m['bound_requests'] / 1e6:.0f} MB)")


def plot(results: dict, path: Path) -> None:
    """Per simulator: taste share and CTR per round, each arm's mean over the seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sims = list(results["summary"])
    fig, axes = plt.subplots(len(sims), 2, figsize=(13, 4.2 * len(sims)), squeeze=False)
    for row, sim in enumerate(sims):
        table = {k: v for k, v in results["summary"][sim].items() if k != "targets"}
        runs = results["runs"][sim]
        for name, m in table.items():
            style = {"color": "k", "lw": 2.5} if name == "oracle" else {}
            rounds = list(range(1, len(m["rounds"]) + 1))
            axes[row][0].plot(rounds, m["rounds"], marker="o", ms=3, label=name, **style)
            axes[row][1].plot(rounds, m["rounds_ctr"], marker="o", ms=3, label=name, **style)
        any_run = next(iter(next(iter(runs.values())).values()))
        rounds = [x["round"] for x in any_run["rounds"]]
        axes[row][0].plot(rounds, [x["chance_share"] for x in any_run["rounds"]], "k--", lw=0.8, label="chance")
        for ax in axes[row]:
            ax.axvline(any_run["config"]["drift_after"] + 0.5, color="grey", lw=0.8)
        axes[row][0].set(title=f"'{sim}' simulator: shown items in the current taste", xlabel="round",
                         ylabel="taste share")
        axes[row][1].set(title=f"'{sim}' simulator: click-through rate", xlabel="round", ylabel="CTR")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Closed loop on the synthetic shop ({results['mode']} mode, mean over seeds "
                 f"{results['seeds']}): tastes move after the grey line")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
