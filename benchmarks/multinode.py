"""Raycart on a multi-node Ray cluster on this machine (issue 15): what an acknowledgement costs and
what losing a node costs.

Phases (``--phase``, comma-separated):

* ``ack``: the latency of one acknowledged feedback append (what ``/feedback`` waits for) with
  ``feedback_ack: local`` (fsync on the replica's disk, the baseline, same run) and ``shared``
  (group commit to the SeaweedFS S3 server on 127.0.0.1), with 1 and 8 concurrent appenders;
  the shared log's appends per write (group commit) too.
* ``train-loss``: `raycart train retriever` (2 workers, one per node) as a job, undisturbed and
  with a worker node lost after its second checkpoint; the training time lost (not in the default
  ``--phase``).
* ``head-restart``: the same app on a head whose GCS keeps its tables in Redis (GCS fault
  tolerance); the GCS killed under load and restarted ``--gcs-down`` seconds later. Failed requests
  and p99 while it was down.
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
import contextlib
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
from local_s3 import LocalS3, checkpoints  # noqa: E402


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def ack_phase(s3: LocalS3, work: Path, appends: int) -> list[dict]:
    from serving.feedback.log import FeedbackLog, FeedbackLogConfig
    from serving.feedback.shared import SharedFeedbackLog, SharedLogConfig

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


@contextlib.contextmanager
def app_cluster(s3: LocalS3, work: Path, a: argparse.Namespace, tag: str, gcs_ft: bool = False,
                head_env: dict | None = None, deployments: list[dict] | None = None):
    """Head (no CPUs; with ``gcs_ft`` its GCS backed by a Redis) + worker nodes a and b, Redis for
    user state, and the app deployed with `serve deploy`; yields ``(nodes, app, s3 info)``."""
    from multinode_app import deploy_app, replicas
    from ray_nodes import head_and_two_nodes

    from serving.state.redis_server import LocalRedis

    s3_info = {"env": s3.env, "bucket": s3.bucket, "client": s3.client}
    redis = LocalRedis(work / "redis").start()
    try:
        t = time.time()
        with head_and_two_nodes(work, s3.env, cpus=2, gcs_ft=gcs_ft, head_env=head_env) as nodes:
            print(f"[{tag}] cluster: head + 2 worker nodes in {time.time() - t:.0f} s", flush=True)
            t = time.time()
            app = deploy_app(nodes, s3_info, redis.url, Path(a.model), Path(a.data), work, prefix=f"bench-{tag}",
                             deployments=deployments)
            print(f"[{tag}] serve deploy -> ready in {time.time() - t:.0f} s; replicas {replicas(nodes)}", flush=True)
            yield nodes, app, s3_info
    finally:
        redis.stop()


# the GCS declares a node dead after this many failed health checks, this far apart: Ray's defaults
# (5 x 3 s) and a faster setting (3 x 1 s), set on the head as RAY_health_check_* variables
DETECTION = {"node-loss": None, "node-loss-fast": {"RAY_health_check_period_ms": "1000",
                                                   "RAY_health_check_failure_threshold": "3"},
             "node-loss-serve-hc": None}
# ... and Serve's own replica health check (default every 10 s, 30 s timeout), at 2 s / 2 s
SERVE_HC = {"health_check_period_s": 2, "health_check_timeout_s": 2}
DEPLOYMENTS = {"node-loss-serve-hc": [{"name": d, "num_replicas": 2, **SERVE_HC}
                                      for d in ("Ingress", "Retriever", "Ranker")]
               + [{"name": d, **SERVE_HC} for d in ("Policy", "ItemRegistry")]}


def node_loss_phase(s3: LocalS3, work: Path, a: argparse.Namespace, tag: str = "node-loss") -> dict:
    from multinode_app import lose_a_node

    with app_cluster(s3, work, a, tag, head_env=DETECTION[tag], deployments=DEPLOYMENTS.get(tag)) as (
            nodes, app, s3_info):
        run = lose_a_node(nodes, app, s3_info, warm_s=a.warm, down_s=a.down, after_s=a.after, threads=a.threads,
                          rate=a.rate, timeline=True)
    run["head_env"], run["deployments"] = DETECTION[tag], DEPLOYMENTS.get(tag)
    print(f"[{tag}] {run['requests']} requests, {run['failed']} failed ({100 * run['failed_rate']:.2f} %), "
          f"p99 {run['p99_ms']:.0f} ms (30 s after the loss: {run['p99_ms_30s_after_loss']:.0f} ms); every replica "
          f"running again {run['full_capacity_s_after_loss']:.0f} s after the loss; "
          f"{run['acked_events']} events acknowledged, {run['lost_events']} lost", flush=True)
    return run


def head_restart_phase(s3: LocalS3, work: Path, a: argparse.Namespace) -> dict:
    from multinode_app import restart_gcs_under_load

    with app_cluster(s3, work, a, "head-restart", gcs_ft=True) as (nodes, app, _):
        run = restart_gcs_under_load(nodes, app, warm_s=a.warm, down_s=a.gcs_down, after_s=a.after,
                                     threads=a.threads, rate=a.rate)
        run["nodes_alive_after"] = len(nodes.alive_ids())
    print(f"[head-restart] GCS down {run['gcs_down_s']:.1f} s: {run['requests']} requests, {run['failed']} failed "
          f"({run['requests_while_gcs_down']} while the GCS was down, {run['failed_while_gcs_down']} failed); "
          f"p99 {run['p99_ms']:.0f} ms, while down {run['p99_ms_while_gcs_down']:.0f} ms", flush=True)
    return run


def train_loss_phase(s3: LocalS3, work: Path, a: argparse.Namespace) -> dict:
    """`raycart train retriever --workers 2 --placement STRICT_SPREAD` as a job, twice on fresh
    clusters: undisturbed, then with worker node a lost after the second checkpoint (a replacement
    joins 5 s later). Training time lost = the difference in wall time."""
    from ray_nodes import head_and_two_nodes

    from training.data.prepare import prepare

    data = str(work / "shop")
    prepare("synthetic", None, data, num_users=a.train_users, num_items=300, num_events=a.train_users * 20,
            images=False)
    runs = {}
    for tag in ("undisturbed", "node lost"):
        prefix = f"bench-train-{tag.replace(' ', '-')}-{int(time.time())}"
        out = work / f"model-{tag.replace(' ', '-')}"
        with head_and_two_nodes(work, s3.env, cpus=1) as nodes:
            started = time.time()
            submitted = nodes.submit(prefix, "train", "retriever", "--data", data, "--out", str(out), "--workers", "2",
                                     "--placement", "STRICT_SPREAD", "--storage", f"s3://{s3.bucket}/{prefix}/runs",
                                     "--smoke", "--batch-size", "16", "--epochs", str(a.train_epochs),
                                     "--patience", "100", "--max-failures", "3", env_vars=s3.env)
            if submitted.returncode != 0:
                raise RuntimeError(submitted.stdout[-2000:] + submitted.stderr[-2000:])
            lost_at = None
            while nodes.job_status(prefix) in ("PENDING", "RUNNING"):
                if tag == "node lost" and lost_at is None and checkpoints(s3.client, s3.bucket, f"{prefix}/runs/") >= 2:
                    lost_at = time.time()
                    nodes.kill("a")
                    time.sleep(5)
                    nodes.add_node("c", num_cpus=1)
                time.sleep(0.5)
            wall = time.time() - started
            status = nodes.job_status(prefix)
        doc = json.loads((out / "model.json").read_text()) if status == "SUCCEEDED" else {}
        epochs = [h["epoch"] for h in doc.get("history", [])]
        runs[tag] = {"status": status, "wall_s": wall, "epochs": epochs, "resumes": doc.get("resumes"),
                     "epoch_s": float(np.median([h["seconds"] for h in doc["history"]])) if epochs else None,
                     "lost_after_s": (lost_at - started) if lost_at else None}
        print(f"[train-loss] {tag}: {status} in {wall:.0f} s, epochs {epochs}, resumes {doc.get('resumes')}",
              flush=True)
    base, hit = runs["undisturbed"], runs["node lost"]
    lost = hit["wall_s"] - base["wall_s"]
    result = {"runs": runs, "time_lost_s": lost,
              "time_lost_epochs": lost / base["epoch_s"] if base["epoch_s"] else None,
              "epochs_repeated": len(hit["epochs"]) - len(set(hit["epochs"])), "replacement_after_s": 5}
    print(f"[train-loss] time lost to the node: {lost:.0f} s (= {result['time_lost_epochs']:.1f} epochs of "
          f"{base['epoch_s']:.1f} s); epochs repeated in the history: {result['epochs_repeated']}", flush=True)
    return result


def plot(runs: dict[str, dict], path: Path, down: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(7 * len(runs), 4), sharey=True, squeeze=False)
    for ax, (tag, run) in zip(axes[0], runs.items(), strict=True):
        t = np.array([r[0] for r in run["timeline"]])
        ms = np.array([1000 * r[1] for r in run["timeline"]])
        ok = np.array([r[2] == 200 for r in run["timeline"]])
        ax.scatter(t[ok], ms[ok], s=6, label="answered (200)")
        if (~ok).any():
            ax.scatter(t[~ok], ms[~ok], s=20, marker="x", color="red", label="failed")
        ax.axvline(0, color="black", linestyle="--", label="worker node lost")
        ax.axvline(down, color="green", linestyle="--", label="replacement joins")
        ax.set_yscale("log")
        ax.set_xlabel("seconds since the node was lost")
        detection = ("Serve replica health check 2 s" if run.get("deployments") else
                     "GCS node health check 3 x 1 s" if run.get("head_env") else "defaults")
        ax.set_title(f"{tag}: {detection}", fontsize=10)
    axes[0][0].set_ylabel("request latency (ms)")
    axes[0][0].legend(loc="upper right", fontsize=8)
    fig.suptitle("Serve app on 3 Ray nodes: /recommend + /feedback while a worker node is lost")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="a ranker directory (node-loss phase)")
    p.add_argument("--data", help="its dataset (node-loss phase)")
    p.add_argument("--phase", default="ack,node-loss,node-loss-fast,node-loss-serve-hc,head-restart")
    p.add_argument("--appends", type=int, default=200, help="appends per appender (ack phase)")
    p.add_argument("--warm", type=float, default=20)
    p.add_argument("--down", type=float, default=30, help="seconds between the loss and the replacement")
    p.add_argument("--after", type=float, default=30)
    p.add_argument("--gcs-down", type=float, default=10, help="seconds the GCS stays down (head-restart phase)")
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--rate", type=float, default=6.0, help="requests per second, all shoppers together")
    p.add_argument("--train-epochs", type=int, default=8, help="epochs of the train-loss runs")
    p.add_argument("--train-users", type=int, default=1500, help="shoppers of the train-loss runs' shop (x20 events)")
    p.add_argument("--out", default="benchmarks/results/multinode.json")
    a = p.parse_args()
    phases = a.phase.split(",")
    if {"node-loss", "node-loss-fast", "head-restart"} & set(phases) and not (a.model and a.data):
        p.error("--model and --data are needed for the node-loss and head-restart phases")
    out = Path(a.out)
    # phases run now replace their earlier results in the file; the others are kept, with their command
    result = json.loads(out.read_text()) if out.exists() else {"phases": {}, "commands": {}}
    if "command" in result:  # an earlier file: one command for all its phases
        command = result.pop("command")
        result["commands"] = {p: command for p in result["phases"]}
    result.setdefault("commands", {})
    result["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count()}
    result["date"] = time.strftime("%Y-%m-%d")
    for phase in phases:
        result["commands"][phase] = " ".join(sys.argv)
    with tempfile.TemporaryDirectory(prefix="rc-mn-", dir="/tmp") as tmp:
        s3 = LocalS3(Path(tmp) / "s3").start()
        os.environ.update(s3.env)  # this process's own S3 clients (the shared log, the log reader)
        try:
            if "ack" in phases:
                result["phases"]["ack"] = ack_phase(s3, Path(tmp) / "ack", a.appends)
            for tag in [t for t in DETECTION if t in phases]:
                (Path(tmp) / tag).mkdir()
                run = node_loss_phase(s3, Path(tmp) / tag, a, tag)
                result["phases"][tag] = run | {"settings": {"warm_s": a.warm, "down_s": a.down, "after_s": a.after,
                                                            "threads": a.threads, "rate": a.rate}}
            runs = {t: result["phases"][t] for t in DETECTION if "timeline" in result["phases"].get(t, {})}
            if runs:  # every node-loss run in the file, this invocation's and earlier ones
                plot(runs, out.with_suffix(".png"), a.down)
            if "train-loss" in phases:
                (Path(tmp) / "tl").mkdir()
                result["phases"]["train-loss"] = train_loss_phase(s3, Path(tmp) / "tl", a)
            if "head-restart" in phases:
                (Path(tmp) / "hr").mkdir()
                result["phases"]["head-restart"] = head_restart_phase(s3, Path(tmp) / "hr", a)
        finally:
            s3.stop()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print("\n| phase | setting | result |\n|---|---|---|")
    for row in result["phases"].get("ack", []):
        print(f"| ack | {row['ack']} x{row['appenders']} | p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms, "
              f"{row['appends_per_s']:.0f}/s |")
    for tag in DETECTION:
        nl = result["phases"].get(tag)
        if not nl:
            continue
        print(f"| {tag} | {nl['requests']} requests | {nl['failed']} failed ({100 * nl['failed_rate']:.2f} %), "
              f"p99 {nl['p99_ms']:.0f} ms, p99 after loss {nl['p99_ms_30s_after_loss']:.0f} ms, "
              f"all replicas running {nl['full_capacity_s_after_loss']:.0f} s after the loss, "
              f"{nl['lost_events']} of {nl['acked_events']} acknowledged events lost |")
    hr = result["phases"].get("head-restart")
    if hr:
        print(f"| head restart | GCS down {hr['gcs_down_s']:.0f} s, {hr['requests']} requests | {hr['failed']} failed, "
              f"{hr['requests_while_gcs_down']} answered while down, "
              f"p99 while down {hr['p99_ms_while_gcs_down']:.0f} ms |")
    tl = result["phases"].get("train-loss")
    if tl:
        print(f"| train, node lost | {tl['runs']['undisturbed']['wall_s']:.0f} s undisturbed | "
              f"{tl['runs']['node lost']['wall_s']:.0f} s with the loss: {tl['time_lost_s']:.0f} s lost "
              f"({tl['time_lost_epochs']:.1f} epochs), {tl['epochs_repeated']} epochs repeated |")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
