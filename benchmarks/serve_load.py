"""Bounded HTTP load on 127.0.0.1: Ray Serve (1 replica each / autoscaling) vs one plain FastAPI process.

For each setup and each concurrency level (closed loop: C clients, each sends its next request
when the last one is answered, for ``--duration`` seconds) it records p50/p95/p99 latency,
throughput and errors of ``POST /recommend`` for random known users of the dataset. Setups:

* ``plain FastAPI``: ``benchmarks/plain_fastapi.py`` -- the same serving modules in one uvicorn
  process, no Ray (the baseline; Serve's overhead is the latency ratio against it);
* ``serve 1 replica``: the Raycart Serve app, one replica per deployment;
* ``serve autoscaling``: the same with Ingress/Retriever/Ranker autoscaling (1..``--max-replicas``).

Then the autoscaling timeline: a load step (``--step`` low -> high -> low clients) while the
replica counts are sampled every second. Prints one table, writes JSON and two plots (latency vs
throughput; the autoscaling timeline).

    .venv/bin/python benchmarks/serve_load.py --model raycart-work/models/beauty-ranker \\
        --data raycart-work/data/beauty
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


class _SkipStep(Exception):
    pass


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="ranker model directory")
    p.add_argument("--data", required=True, help="its dataset")
    p.add_argument("--levels", default="1,4,16,64")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per level")
    p.add_argument("--max-replicas", type=int, default=3)
    p.add_argument("--step", default="2,48,2", help="clients before, during and after the load step")
    p.add_argument("--step-seconds", default="15,45,45")
    p.add_argument("--app-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="override an AppArgs field for the Serve setups (e.g. batch_wait_timeout_s=0.001)")
    p.add_argument("--no-step", action="store_true", help="skip the autoscaling load step")
    p.add_argument("--out", default="benchmarks/results/serve_load.json")
    a = p.parse_args()
    levels = [int(x) for x in a.levels.split(",")]

    from training.ray_env import init_ray

    init_ray(num_cpus=os.cpu_count())
    from ray import serve

    from serving.app import build_app
    from serving.catalog import Catalog

    users = list(Catalog.load(a.data).user_index)
    work = Path(tempfile.mkdtemp(prefix="raycart-load-"))
    results: dict[str, list[dict]] = {}

    def sweep(name: str, url: str) -> None:
        run_level(url, users, 2, 3.0)  # warm-up
        results[name] = []
        for c in levels:
            row = run_level(url, users, c, a.duration)
            results[name].append(row)
            print(f"  {name:18s} c={c:<3d} {row['throughput_rps']:7.1f} req/s  p50 {row['p50_ms']:7.1f}  "
                  f"p95 {row['p95_ms']:7.1f}  p99 {row['p99_ms']:7.1f} ms  errors {row['errors']}", flush=True)

    # 1. the plain FastAPI baseline, one process
    port = free_port()
    plain = subprocess.Popen([sys.executable, str(ROOT / "benchmarks/plain_fastapi.py"), "--model", a.model,
                              "--data", a.data, "--workdir", str(work / "plain"), "--port", str(port)],
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        wait_ready(f"http://127.0.0.1:{port}")
        sweep("plain FastAPI", f"http://127.0.0.1:{port}")
    finally:
        plain.terminate()
        plain.wait(30)

    # 2./3. Ray Serve, fixed and autoscaling
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    base = {"model_dir": a.model, "data_dir": a.data, "feedback_root": str(work / "feedback"),
            "wal_dir": str(work / "wal"), "policy_state": str(work / "policy.npz"), "items_root": str(work / "items"),
            **{k: yaml.safe_load(v) for k, v in (x.split("=", 1) for x in a.app_arg)}}
    timeline: list[dict] = []
    try:
        serve.run(build_app(base), name="raycart", route_prefix="/")
        wait_ready(url)
        sweep("serve 1 replica", url)
        serve.delete("raycart")
        serve.run(build_app({**base, "autoscaling": True, "max_replicas": a.max_replicas}), name="raycart",
                  route_prefix="/")
        wait_ready(url)
        sweep("serve autoscaling", url)
        if a.no_step:
            raise _SkipStep
        # let it scale back down, then the load step with the replica counts sampled every second
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
        step = [int(x) for x in a.step.split(",")]
        seconds = [float(x) for x in a.step_seconds.split(",")]
        phases = []
        for clients, secs in zip(step, seconds):
            row = run_level(url, users, clients, secs)
            phases.append({**row, "start_s": round(time.time() - t0 - secs, 1), "seconds": secs})
            print(f"  step: {clients} clients for {secs:.0f}s -> {row['throughput_rps']:.1f} req/s, "
                  f"p95 {row['p95_ms']:.0f} ms; replicas now {replica_counts()}", flush=True)
        stop.set()
        sampler.join()
    except _SkipStep:
        phases = []
    finally:
        serve.shutdown()
        shutil.rmtree(work, ignore_errors=True)

    base_rows = {r["concurrency"]: r for r in results["plain FastAPI"]}
    print("\n| setup | clients | req/s | p50 ms | p95 ms | p99 ms | errors | p50 vs plain |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, rows in results.items():
        for r in rows:
            ratio = r["p50_ms"] / base_rows[r["concurrency"]]["p50_ms"]
            r["p50_vs_plain"] = ratio
            print(f"| {name} | {r['concurrency']} | {r['throughput_rps']:.1f} | {r['p50_ms']:.1f} | "
                  f"{r['p95_ms']:.1f} | "
                  f"{r['p99_ms']:.1f} | {r['errors']} | {ratio:.2f}x |")
    peak = {n: max(r["throughput_rps"] for r in rows) for n, rows in results.items()}
    print("peak throughput: " + ", ".join(f"{n} {v:.1f} req/s" for n, v in peak.items()))

    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": "serve_load", "date": time.strftime("%Y-%m-%d"), "machine": {
        "platform": platform.platform(), "cpus": os.cpu_count()}, "model": a.model, "data": a.data,
        "duration_s": a.duration, "results": results, "peak_rps": peak, "step": phases, "timeline": timeline}
    out.write_text(json.dumps(doc, indent=2) + "\n")
    plot(doc, out.with_suffix(".png"), out.with_name(out.stem + "_autoscaling.png"))
    print(f"wrote {out}, {out.with_suffix('.png')}, {out.with_name(out.stem + '_autoscaling.png')}")


def plot(doc: dict, curve: Path, scaling: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, rows in doc["results"].items():
        ax.plot([r["throughput_rps"] for r in rows], [r["p95_ms"] for r in rows], marker="o", label=f"{name} (p95)")
        for r in rows:
            ax.annotate(str(r["concurrency"]), (r["throughput_rps"], r["p95_ms"]), fontsize=7)
    ax.set_xlabel("throughput (requests/s)")
    ax.set_ylabel("p95 latency (ms)")
    ax.set_yscale("log")
    ax.set_title("POST /recommend, 200 candidates (labels: concurrent clients)")
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
