"""Bounded HTTP load on 127.0.0.1: the Raycart Serve app in several setups vs one plain FastAPI process.

For each setup and each concurrency level (closed loop: C clients, each sends its next request
when the last one is answered, for ``--duration`` seconds; the benchmark's own asyncio/aiohttp
generator, which times each request itself -- locust's headless mode measures the same, with a
heavier client on the same 2 cores) it records p50/p95/p99 latency, throughput and errors of
``POST /recommend`` for random known users of the dataset. Setups:

* ``plain FastAPI``: ``benchmarks/plain_fastapi.py`` -- the same ``RecommendService`` and HTTP edge
  in one uvicorn process, no Ray (the baseline: like with like);
* the Serve app, one replica per deployment, in the :data:`SETUPS` (topology, batch window, Ray
  Serve's throughput-optimized mode and HAProxy ingress -- those two in a fresh Ray whose
  processes see the flag).

``benchmarks/results/serve_load.json`` records ``ratio_p50_c1`` and ``ratio_peak_qps`` of the
default setup over the plain process (same run). ``--step-test`` adds the autoscaling load step.

    .venv/bin/python benchmarks/serve_load.py --model raycart-work/models/demo-shop-ranker-... \\
        --data raycart-work/data/shop --levels 1,4,16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _client(session, url: str, users: list[str], rng, until: float, out: list) -> None:
    while time.perf_counter() < until:
        body = {"user_id": users[int(rng.integers(len(users)))], "k": 10, "context": {"device": "web"}}
        t0 = time.perf_counter()
        try:
            async with session.post(url + "/recommend", json=body) as r:
                await r.read()
                ok = r.status == 200
        except Exception:  # noqa: BLE001 -- counted as an error
            ok = False
        out.append((t0, time.perf_counter() - t0, ok))


async def _load(url: str, users: list[str], concurrency: int, duration: float, seed: int) -> list:
    import aiohttp

    out: list = []
    until = time.perf_counter() + duration
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        await asyncio.gather(*(_client(session, url, users, np.random.default_rng(seed + c), until, out)
                               for c in range(concurrency)))
    return out


def run_level(url: str, users: list[str], concurrency: int, duration: float, seed: int = 0) -> dict:
    start = time.perf_counter()
    rows = asyncio.run(_load(url, users, concurrency, duration, seed))
    elapsed = time.perf_counter() - start
    lat = np.array([r[1] for r in rows if r[2]]) * 1000
    errors = sum(1 for r in rows if not r[2])
    pct = np.percentile(lat, [50, 95, 99]) if len(lat) else [float("nan")] * 3
    return {"concurrency": concurrency, "requests": len(rows), "errors": errors,
            "throughput_rps": len(lat) / elapsed, "p50_ms": float(pct[0]), "p95_ms": float(pct[1]),
            "p99_ms": float(pct[2])}


def wait_ready(url: str, timeout: float = 300) -> None:
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise RuntimeError(f"{url} did not come up in {timeout:.0f}s")


def replica_counts(app: str = "raycart") -> dict[str, int]:
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None:
        return {}
    return {name: int(sum(n for state, n in d.replica_states.items() if str(state).endswith("RUNNING")))
            for name, d in status.deployments.items()}


# name -> (AppArgs overrides, environment of a fresh Ray for it or None)
SETUPS = {
    "serve separate": ({"topology": "separate"}, None),
    "serve fused": ({"topology": "fused"}, None),
    "serve separate fixed-window": ({"topology": "separate", "adaptive_batching": False}, None),
    "serve fused throughput-optimized": ({"topology": "fused"},
                                          {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}),
    "serve fused haproxy": ({"topology": "fused"}, {"RAY_SERVE_ENABLE_HA_PROXY": "1"}),
    # the policy's choice in the Ingress from a copy of its parameters (no Policy hop)
    "serve fused policy-copy": ({"topology": "fused", "policy_copy_s": 1.0}, None),
    # user state in a Redis server the Ingress talks to directly (no UserStateStore hop)
    "serve fused redis-state": ({"topology": "fused", "user_state": "redis"}, None),
    "serve fused policy-copy redis-state": ({"topology": "fused", "policy_copy_s": 1.0, "user_state": "redis"}, None),
}
DEFAULT = "serve fused"  # the setup the target ratios (ratio_p50_c1, ratio_peak_qps) are computed for


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="ranker model directory")
    p.add_argument("--data", required=True, help="its dataset")
    p.add_argument("--levels", default="1,4,16,64")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per level")
    p.add_argument("--setups", default=",".join(SETUPS), help="comma-separated names of SETUPS to run")
    p.add_argument("--max-replicas", type=int, default=3)
    p.add_argument("--step", default="2,48,2", help="clients before, during and after the load step")
    p.add_argument("--step-seconds", default="15,45,45")
    p.add_argument("--app-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="override an AppArgs field for the Serve setups (e.g. batch_wait_timeout_s=0.001)")
    p.add_argument("--step-test", action="store_true", help="also run the autoscaling load step")
    p.add_argument("--out", default="benchmarks/results/serve_load.json")
    a = p.parse_args()
    levels = [int(x) for x in a.levels.split(",")]
    setups = [x.strip() for x in a.setups.split(",") if x.strip()]
    unknown = [x for x in setups if x not in SETUPS]
    if unknown:
        p.error(f"--setups: unknown {unknown}; known: {list(SETUPS)}")

    from serving.core.catalog import Catalog

    users = list(Catalog.load(a.data).user_index)
    work = Path(tempfile.mkdtemp(prefix="raycart-load-"))
    results: dict[str, list[dict]] = {}
    extra = {k: yaml.safe_load(v) for k, v in (x.split("=", 1) for x in a.app_arg)}

    def sweep(name: str, url: str) -> None:
        run_level(url, users, 2, 3.0)  # warm-up
        results[name] = []
        for c in levels:
            row = run_level(url, users, c, a.duration)
            results[name].append(row)
            print(f"  {name:36s} c={c:<3d} {row['throughput_rps']:7.1f} req/s  p50 {row['p50_ms']:7.1f}  "
                  f"p95 {row['p95_ms']:7.1f}  p99 {row['p99_ms']:7.1f} ms  errors {row['errors']}", flush=True)

    # 1. the plain FastAPI baseline: the same RecommendService and HTTP edge in one process
    port = free_port()
    plain = subprocess.Popen([sys.executable, str(ROOT / "benchmarks/plain_fastapi.py"), "--model", a.model,
                              "--data", a.data, "--workdir", str(work / "plain"), "--port", str(port),
                              *[f"--app-arg={x}" for x in a.app_arg]],
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        wait_ready(f"http://127.0.0.1:{port}")
        sweep("plain FastAPI", f"http://127.0.0.1:{port}")
    finally:
        plain.terminate()
        plain.wait(30)

    # 2. the Serve setups: one replica per deployment; those with their own environment in a fresh Ray
    from training.common.ray_env import init_ray

    timeline: list[dict] = []
    phases: list[dict] = []
    current_env: dict | None = {}
    for n, name in enumerate(setups):
        overrides, env = SETUPS[name]
        ray_env = env or {}
        if ray_env != current_env:
            import ray

            if ray.is_initialized():
                from ray import serve

                serve.shutdown()
                ray.shutdown()
            for key in ("RAY_SERVE_THROUGHPUT_OPTIMIZED", "RAY_SERVE_ENABLE_HA_PROXY"):
                os.environ.pop(key, None)
            os.environ.update(ray_env)
            init_ray(num_cpus=os.cpu_count())
            current_env = ray_env
        from ray import serve

        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        url = f"http://127.0.0.1:{port}"
        root = work / f"setup{n}"
        base = {"model_dir": a.model, "data_dir": a.data, "feedback_root": str(root / "feedback"),
                "wal_dir": str(root / "wal"), "policy_state": str(root / "policy.npz"),
                "items_root": str(root / "items"), "state_dir": str(root / "state"),
                "trust_loopback": True, **overrides, **extra}  # no keys: the load comes from this machine
        from serving.deploy.app import build_app

        redis = None
        if base.get("user_state") == "redis":  # a real server on 127.0.0.1, fresh per setup
            from serving.state.redis_server import LocalRedis

            redis = LocalRedis(root / "redis").start()
            base["redis_url"] = redis.url
        try:
            serve.run(build_app(base), name="raycart", route_prefix="/")
            wait_ready(url)
            sweep(name, url)
            if a.step_test and name == DEFAULT:
                serve.delete("raycart")
                serve.run(build_app({**base, "autoscaling": True, "max_replicas": a.max_replicas}),
                          name="raycart", route_prefix="/")
                wait_ready(url)
                phases = load_step(a, url, users, timeline)
        except Exception as exc:  # noqa: BLE001 -- a setup that cannot run is reported, the others go on
            print(f"  {name}: FAILED ({type(exc).__name__}: {str(exc)[:300]})", flush=True)
            results[name] = [{"error": f"{type(exc).__name__}: {str(exc)[:500]}"}]
        finally:
            serve.shutdown()
            if redis is not None:
                redis.stop()
    shutil.rmtree(work, ignore_errors=True)

    base_rows = {r["concurrency"]: r for r in results["plain FastAPI"]}
    print("\n| setup | clients | req/s | p50 ms | p95 ms | p99 ms | errors | p50 vs plain |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, rows in results.items():
        for r in rows:
            if "error" in r:
                print(f"| {name} | - | failed: {r['error'][:80]} |")
                continue
            ratio = r["p50_ms"] / base_rows[r["concurrency"]]["p50_ms"]
            r["p50_vs_plain"] = ratio
            print(f"| {name} | {r['concurrency']} | {r['throughput_rps']:.1f} | {r['p50_ms']:.1f} | "
                  f"{r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} | {ratio:.2f}x |")
    peak = {n: max(r["throughput_rps"] for r in rows) for n, rows in results.items() if "error" not in rows[0]}
    print("peak throughput: " + ", ".join(f"{n} {v:.1f} req/s" for n, v in peak.items()))
    targets = {}
    if DEFAULT in peak and 1 in base_rows:
        c1 = next(r for r in results[DEFAULT] if r["concurrency"] == 1)
        targets = {"setup": DEFAULT, "ratio_p50_c1": c1["p50_ms"] / base_rows[1]["p50_ms"],
                   "ratio_peak_qps": peak[DEFAULT] / peak["plain FastAPI"]}
        print(f"targets ({DEFAULT} over plain, same run): p50 at 1 client {targets['ratio_p50_c1']:.2f}x "
              f"(target <= 1.5x), peak throughput {targets['ratio_peak_qps']:.2f}x (target >= 0.9x)")

    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": "serve_load", "date": time.strftime("%Y-%m-%d"), "machine": {
        "platform": platform.platform(), "cpus": os.cpu_count()}, "model": a.model, "data": a.data,
        "command": "python benchmarks/serve_load.py " + " ".join(sys.argv[1:]),
        "duration_s": a.duration, "setups": {n: {"app_args": SETUPS[n][0], "env": SETUPS[n][1]} for n in setups},
        "results": results, "peak_rps": peak, **targets, "step": phases, "timeline": timeline}
    out.write_text(json.dumps(doc, indent=2) + "\n")
    plot(doc, out.with_suffix(".png"), out.with_name(out.stem + "_autoscaling.png"))
    print(f"wrote {out}, {out.with_suffix('.png')}")


def load_step(a: argparse.Namespace, url: str, users: list[str], timeline: list[dict]) -> list[dict]:
    """Let the autoscaler scale down, then a load step with the replica counts sampled every second."""
    print("  waiting for the autoscaler to scale down before the load step ...", flush=True)
    deadline = time.time() + 120
    while time.time() < deadline and any(n > 1 for n in replica_counts().values()):
        time.sleep(2)
    stop = threading.Event()
    t0 = time.time()

    def sample() -> None:
        while not stop.is_set():
            timeline.append({"t": round(time.time() - t0, 1), **replica_counts()})
            time.sleep(1.0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    phases = []
    for clients, secs in zip([int(x) for x in a.step.split(",")], [float(x) for x in a.step_seconds.split(",")]):
        row = run_level(url, users, clients, secs)
        phases.append({**row, "start_s": round(time.time() - t0 - secs, 1), "seconds": secs})
        print(f"  step: {clients} clients for {secs:.0f}s -> {row['throughput_rps']:.1f} req/s, "
              f"p95 {row['p95_ms']:.0f} ms; replicas now {replica_counts()}", flush=True)
    stop.set()
    sampler.join()
    return phases


def plot(doc: dict, curve: Path, scaling: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, rows in doc["results"].items():
        if rows and "error" in rows[0]:
            continue
        ax.plot([r["throughput_rps"] for r in rows], [r["p95_ms"] for r in rows], marker="o", label=f"{name} (p95)")
        for r in rows:
            ax.annotate(str(r["concurrency"]), (r["throughput_rps"], r["p95_ms"]), fontsize=7)
    ax.set_xlabel("throughput (requests/s)")
    ax.set_ylabel("p95 latency (ms)")
    ax.set_yscale("log")
    ax.set_title("POST /recommend (labels: concurrent clients)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(curve, dpi=120)
    plt.close(fig)

    tl = doc["timeline"]
    if not tl:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    names = sorted({k for row in tl for k in row if k != "t"})
    for n in names:
        ax.step([r["t"] for r in tl], [r.get(n, 0) for r in tl], where="post", label=n)
    for ph in doc["step"]:
        ax.axvspan(ph["start_s"], ph["start_s"] + ph["seconds"], alpha=0.08 * (1 + ph["concurrency"] / 16),
                   color="grey")
        ax.text(ph["start_s"] + 1, 0.95, f"{ph['concurrency']} clients", fontsize=8,
                transform=ax.get_xaxis_transform())
    ax.set_xlabel("seconds")
    ax.set_ylabel("running replicas")
    ax.set_title("Autoscaling under a load step")
    ax.legend()
    fig.tight_layout()
    fig.savefig(scaling, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
