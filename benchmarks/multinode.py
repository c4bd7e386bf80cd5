"""Raycart on a multi-node Ray cluster on this machine (issue 15): what an acknowledgement costs and
what losing a node costs.

Phases (``--phase``, comma-separated):

* ``ack``: the latency of one acknowledged feedback append (what ``/feedback`` waits for) with
  ``feedback_ack: local`` (fsync on the replica's disk, the baseline, same run) and ``shared``
  (group commit to the SeaweedFS S3 server on 127.0.0.1), with 1 and 8 concurrent appenders;
  the shared log's appends per write (group commit) too.
* ``node-loss``: the Serve app deployed with `serve deploy` on a head plus two worker nodes
  (tests/integration/ray_nodes.py, multinode_app.py: model, data, feedback log and policy on S3,
  user state in Redis); shoppers at a bounded rate; a worker node lost (every process SIGKILLed),
  a replacement added ``--down`` seconds later. Failed requests, p99 (whole run and the 30 s
  after the loss), time until every replica runs again, acknowledged records lost (must be 0).

Writes ``benchmarks/results/multinode.json`` and ``multinode.png`` (latency of each request over
time, the loss and the replacement marked).

    .venv/bin/python benchmarks/multinode.py --model raycart-work/models/demo-shop-ranker-... \\
        --data raycart-work/data/shop
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "integration")]  # the test harness: nodes, S3, the app

import numpy as np  # noqa: E402
from local_s3 import LocalS3  # noqa: E402


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def ack_phase(s3: LocalS3, work: Path, appends: int) -> list[dict]:
    from serving.feedback_log import FeedbackLog, FeedbackLogConfig
    from serving.feedback_shared import SharedFeedbackLog, SharedLogConfig

    rows = []
    for mode in ("local", "shared"):
        for threads in (1, 8):
            tag = f"{mode}-{threads}"
            if mode == "local":
                log = FeedbackLog(FeedbackLogConfig(root=str(work / tag / "log"), wal_dir=str(work / tag / "wal"),
                                                    background=True), "bench")
            else:
                log = SharedFeedbackLog(SharedLogConfig(root=f"s3://{s3.bucket}/ack-bench/{tag}"), "bench")
            times: list[float] = []

            def client(t: int, log=log, times=times) -> None:
                for i in range(appends):
                    start = time.perf_counter()
                    log.append("events", {"request_id": f"r{t}-{i}", "item_id": "SKU1", "event": "click",
                                          "timestamp": time.time()})
                    times.append(time.perf_counter() - start)

            started = time.perf_counter()
            workers = [threading.Thread(target=client, args=(t,)) for t in range(threads)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            wall = time.perf_counter() - started
            row = {"ack": mode, "appenders": threads, "appends": len(times), "p50_ms": 1000 * _pct(times, 50),
                   "p99_ms": 1000 * _pct(times, 99), "appends_per_s": len(times) / wall}
            if mode == "shared":
                row["appends_per_write"] = log.committed_rows / max(1, log.commits)
            log.close()
            rows.append(row)
            print(f"[ack] {mode:6s} x{threads}: p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms, "
                  f"{row['appends_per_s']:.0f} appends/s" +
                  (f", {row['appends_per_write']:.1f} appends per write" if mode == "shared" else ""), flush=True)
    return rows


def node_loss_phase(s3: LocalS3, work: Path, a: argparse.Namespace) -> dict:
    from multinode_app import deploy_app, lose_a_node, replicas
    from ray_nodes import RayNodes

    from serving.redis_server import LocalRedis

    s3_info = {"env": s3.env, "bucket": s3.bucket, "client": s3.client}
    redis = LocalRedis(work / "redis").start()
    nodes = RayNodes(node_env=s3.env)
    try:
        t = time.time()
        nodes.start_head(num_cpus=0)
        nodes.add_node("a", num_cpus=2)
        nodes.add_node("b", num_cpus=2)
        print(f"[node-loss] cluster: head + 2 worker nodes in {time.time() - t:.0f} s", flush=True)
        t = time.time()
        app = deploy_app(nodes, s3_info, redis.url, Path(a.model), Path(a.data), work)
        print(f"[node-loss] serve deploy -> ready in {time.time() - t:.0f} s; replicas {replicas(nodes)}", flush=True)
        run = lose_a_node(nodes, app, s3_info, warm_s=a.warm, down_s=a.down, after_s=a.after, threads=a.threads,
                          rate=a.rate, timeline=True)
    finally:
        nodes.stop()
        redis.stop()
    print(f"[node-loss] {run['requests']} requests, {run['failed']} failed ({100 * run['failed_rate']:.2f} %), "
          f"p99 {run['p99_ms']:.0f} ms (30 s after the loss: {run['p99_ms_30s_after_loss']:.0f} ms); full capacity "
          f"{run['full_capacity_s_after_loss']:.0f} s after the loss; "
          f"{run['acked_events']} events acknowledged, {run['lost_events']} lost", flush=True)
    return run


def plot(run: dict, path: Path, down: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.array([r[0] for r in run["timeline"]])
    ms = np.array([1000 * r[1] for r in run["timeline"]])
    ok = np.array([r[2] == 200 for r in run["timeline"]])
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.scatter(t[ok], ms[ok], s=6, label="answered (200)")
    if (~ok).any():
        ax.scatter(t[~ok], ms[~ok], s=20, marker="x", color="red", label="failed")
    ax.axvline(0, color="black", linestyle="--", label="worker node lost")
    ax.axvline(down, color="green", linestyle="--", label="replacement joins")
    ax.set_yscale("log")
    ax.set_xlabel("seconds since the node was lost")
    ax.set_ylabel("request latency (ms)")
    ax.set_title("Serve app on 3 Ray nodes: /recommend + /feedback while a worker node is lost")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="a ranker directory (node-loss phase)")
    p.add_argument("--data", help="its dataset (node-loss phase)")
    p.add_argument("--phase", default="ack,node-loss")
    p.add_argument("--appends", type=int, default=200, help="appends per appender (ack phase)")
    p.add_argument("--warm", type=float, default=20)
    p.add_argument("--down", type=float, default=30, help="seconds between the loss and the replacement")
    p.add_argument("--after", type=float, default=30)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--rate", type=float, default=6.0, help="requests per second, all shoppers together")
    p.add_argument("--out", default="benchmarks/results/multinode.json")
    a = p.parse_args()
    phases = a.phase.split(",")
    if "node-loss" in phases and not (a.model and a.data):
        p.error("--model and --data are needed for the node-loss phase")
    out = Path(a.out)
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
              "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv), "phases": {}}
    with tempfile.TemporaryDirectory(prefix="rc-mn-", dir="/tmp") as tmp:
        s3 = LocalS3(Path(tmp) / "s3").start()
        try:
            if "ack" in phases:
                result["phases"]["ack"] = ack_phase(s3, Path(tmp) / "ack", a.appends)
            if "node-loss" in phases:
                (Path(tmp) / "nl").mkdir()
                run = node_loss_phase(s3, Path(tmp) / "nl", a)
                plot(run, out.with_suffix(".png"), a.down)
                result["phases"]["node-loss"] = {k: v for k, v in run.items() if k != "timeline"} | {
                    "settings": {"warm_s": a.warm, "down_s": a.down, "after_s": a.after, "threads": a.threads,
                                 "rate": a.rate}}
        finally:
            s3.stop()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print("\n| phase | setting | result |\n|---|---|---|")
    for row in result["phases"].get("ack", []):
        print(f"| ack | {row['ack']} x{row['appenders']} | p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms, "
              f"{row['appends_per_s']:.0f}/s |")
    nl = result["phases"].get("node-loss")
    if nl:
        print(f"| node loss | {nl['requests']} requests | {nl['failed']} failed ({100 * nl['failed_rate']:.2f} %), "
              f"p99 {nl['p99_ms']:.0f} ms, p99 after loss {nl['p99_ms_30s_after_loss']:.0f} ms, "
              f"all replicas running {nl['full_capacity_s_after_loss']:.0f} s after the loss, "
              f"{nl['lost_events']} of {nl['acked_events']} acknowledged events lost |")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
