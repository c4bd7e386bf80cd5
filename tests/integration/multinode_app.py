"""The Serve app deployed on a :class:`ray_nodes.RayNodes` cluster as on a real one: `serve deploy`
of a config whose ``runtime_env.working_dir`` is the project as a zip on S3, model and data on S3,
the feedback log acknowledged in shared storage (``feedback_ack: shared``), user state in Redis.
Used by tests/integration/test_multinode_serving.py and benchmarks/multinode.py."""

from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path

import yaml
from local_s3 import keys
from ray_nodes import RayNodes, http
from streams import ShopperStream

from serving.state.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
SPREAD = ("Ingress", "Retriever", "Ranker")  # two replicas each: one per worker node


def upload(client, bucket: str, local: Path, prefix: str) -> str:
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(local)}")
    return f"s3://{bucket}/{prefix}"


def upload_project(client, bucket: str, key: str) -> str:
    """The project as a zip on S3: what a Serve config's ``runtime_env.working_dir`` takes on a
    cluster (`serve deploy` accepts remote URIs only)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for top in ("serving", "training"):
            for path in sorted((ROOT / top).rglob("*.py")):
                z.write(path, f"raycart/{path.relative_to(ROOT)}")
    client.put_object(Bucket=bucket, Key=key, Body=buf.getvalue())
    return f"s3://{bucket}/{key}"


def serve_config(port: int, app_args: dict, project: str, env: dict, deployments: list[dict] | None = None) -> dict:
    """A `serve deploy` config (cluster/serve.yaml's shape); ``deployments`` default: two replicas
    of each :data:`SPREAD` deployment."""
    return {"proxy_location": "HeadOnly",  # one HTTP proxy (the nodes share 127.0.0.1; on a real cluster: EveryNode)
            "http_options": {"host": "127.0.0.1", "port": port, "request_timeout_s": 30},
            "applications": [{
                "name": "raycart", "route_prefix": "/", "import_path": "serving.deploy.app:build_app",
                "runtime_env": {"working_dir": project, "env_vars": env},
                "args": app_args,
                "deployments": deployments or [{"name": d, "num_replicas": 2} for d in SPREAD]}]}


def app_status(nodes: RayNodes) -> tuple[str, dict]:
    """The app's status and each deployment's, through the dashboard's Serve API."""
    code, body = http(f"{nodes.dashboard}/api/serve/applications/", nodes.token)
    if code != 200:
        return f"http {code}", {}
    app = json.loads(body).get("applications", {}).get("raycart")
    if not app:
        return "absent", {}
    return app["status"], {name: d["status"] for name, d in app["deployments"].items()}


def wait_running(nodes: RayNodes, timeout: float) -> None:
    deadline = time.time() + timeout
    while True:
        status, deployments = app_status(nodes)
        if status == "RUNNING" and deployments and all(s == "HEALTHY" for s in deployments.values()):
            return
        if status == "DEPLOY_FAILED" or time.time() > deadline:
            raise RuntimeError(f"the app did not come up: {status} {deployments}")
        time.sleep(1)


def deploy_app(nodes: RayNodes, s3: dict, redis_url: str, model: Path, data: Path, work: Path,
               prefix: str | None = None, timeout: float = 300, deployments: list[dict] | None = None) -> dict:
    """Upload model, data and project to S3, `serve deploy` the app, wait until it runs and
    answers; returns ``url``, ``feedback`` (the log's root) and ``users`` (external ids)."""
    from training.data.dataset import load_dataset

    client, bucket = s3["client"], s3["bucket"]
    prefix = prefix or f"mn-serve-{int(time.time())}"
    args = {"model_dir": upload(client, bucket, model, f"{prefix}/model"),
            "data_dir": upload(client, bucket, data, f"{prefix}/data"),
            "feedback_root": f"s3://{bucket}/{prefix}/feedback", "feedback_ack": "shared",
            "policy_state": f"s3://{bucket}/{prefix}/policy/state.npz", "items_root": f"s3://{bucket}/{prefix}/items",
            "user_state": "redis", "redis_url": redis_url, "wal_dir": str(work / "unused-wal"),
            "request_timeout_s": 30.0, "trust_loopback": True}  # no keys: the tests ask from 127.0.0.1
    port = free_port()
    config = work / "serve.yaml"
    project = upload_project(client, bucket, f"{prefix}/raycart.zip")
    config.write_text(yaml.safe_dump(serve_config(port, args, project, s3["env"], deployments)))
    deployed = nodes.cli("serve", "deploy", str(config), "--address", nodes.dashboard, env=nodes.env(**s3["env"]))
    if deployed.returncode != 0:
        raise RuntimeError(f"serve deploy failed: {deployed.stdout[-2000:]}{deployed.stderr[-2000:]}")
    wait_running(nodes, timeout)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while http(url + "/readyz")[0] != 200:
        if time.time() > deadline:
            raise RuntimeError(f"the app is not ready: {http(url + '/readyz')}")
        time.sleep(1)
    return {"url": url, "feedback": args["feedback_root"], "args": args,
            "users": load_dataset(str(data)).users["external_id"].to_pylist()}


def replicas(nodes: RayNodes) -> dict[str, list[str]]:
    """Node names of the live replicas of each spread deployment."""
    return {d: nodes.placed(f"ServeReplica:raycart:{d}") for d in SPREAD}


def _percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def lose_a_node(nodes: RayNodes, app: dict, s3: dict, node: str = "a", replacement: str = "c",
                warm_s: float = 15, down_s: float = 25, after_s: float = 15, threads: int = 4,
                rate: float = 6.0, publish_timeout_s: float = 120, timeline: bool = False) -> dict:
    """Shoppers at ``rate`` requests/s; after ``warm_s`` the worker node ``node`` is lost (every
    process SIGKILLed); ``down_s`` later a replacement joins; ``after_s`` more of load. Then wait
    until every acknowledged feedback event and answered slate is in the published log. Returns
    the counts, latencies and times (seconds) that the test asserts and the benchmark reports."""
    from training.data.feedback import read_feedback

    writers = [f"ingress-{a['name'].rsplit('#', 1)[-1]}" for a in nodes.state("actors", state="ALIVE")
               if a["class_name"] == "ServeReplica:raycart:Ingress" and nodes.names.get(a["node_id"]) == node]
    client, bucket = s3["client"], s3["bucket"]
    wal = app["feedback"].split("/", 3)[3] + "/_wal"
    full = {d: 2 for d in SPREAD}
    recovered_at = None

    def watch(until: float) -> None:  # load goes on; note when every replica runs again
        nonlocal recovered_at
        while time.time() < until:
            if recovered_at is None:
                status, deployments = app_status(nodes)
                placed = replicas(nodes)  # Ray reports actors on a lost node alive until it notices the loss
                if (status == "RUNNING" and all(v == "HEALTHY" for v in deployments.values())
                        and {d: len(n) for d, n in placed.items()} == full
                        and not any(node in n for n in placed.values())):
                    recovered_at = time.time()
            time.sleep(1)

    with ShopperStream(app["url"], app["users"], threads=threads, rate=rate) as stream:
        time.sleep(warm_s)
        lost_at = time.time()
        nodes.kill(node)  # the machine is gone, with its replicas
        # acknowledged there and not yet published: from now on only the shared WAL holds these
        stranded = sum(k.endswith(".jsonl") for w in writers for k in keys(client, bucket, f"{wal}/{w}/"))
        watch(lost_at + down_s)
        nodes.add_node(replacement, num_cpus=2)
        back_at = time.time()
        watch(back_at + after_s)
    wait_running(nodes, 180)
    recovered_at = recovered_at or time.time()
    placed = replicas(nodes)

    def missing() -> tuple[set, set]:
        events, shown = read_feedback(app["feedback"], "events"), read_feedback(app["feedback"], "impressions")
        have_e = set(zip(events["request_id"].to_pylist(), events["item_id"].to_pylist(),
                         events["event"].to_pylist(), strict=True))
        have_i = set(zip(shown["request_id"].to_pylist(), shown["item_id"].to_pylist(), strict=True))
        return set(stream.acked) - have_e, set(stream.shown) - have_i

    waited = time.time()
    while any(missing()) and time.time() - waited < publish_timeout_s:
        time.sleep(3)
    lost_events, lost_shown = missing()
    latency = [r[3] for r in stream.requests]
    window = [r[3] for r in stream.requests if lost_at <= r[0] < lost_at + 30]
    failed = stream.failed()
    total = len(stream.requests)
    return {"requests": total, "failed": len(failed), "failed_rate": len(failed) / max(1, total),
            "failed_first": [f"{r[1]} {r[2]}" for r in failed[:10]],
            "failed_while_down": len(stream.failed(lost_at, back_at)),
            "p50_ms": 1000 * _percentile(latency, 0.5), "p99_ms": 1000 * _percentile(latency, 0.99),
            "p99_ms_30s_after_loss": 1000 * _percentile(window, 0.99),
            "full_capacity_s_after_loss": recovered_at - lost_at,
            "replacement_joined_s_after_loss": back_at - lost_at, "acked_events": len(stream.acked),
            "answered_slates": len({r for r, _ in stream.shown}), "stranded_groups": stranded,
            "lost_writers": writers, "lost_events": len(lost_events), "lost_slate_items": len(lost_shown),
            "all_published_after_s": time.time() - waited, "placed_after": placed} | (
        {"timeline": [(r[0] - lost_at, r[3], r[2]) for r in stream.requests]} if timeline else {})


def restart_gcs_under_load(nodes: RayNodes, app: dict, warm_s: float = 10, down_s: float = 10,
                           after_s: float = 20, threads: int = 4, rate: float = 6.0) -> dict:
    """Shoppers at ``rate`` requests/s while the head's GCS is killed, left down ``down_s``
    seconds and restarted from its Redis (GCS fault tolerance). Returns counts and latencies."""
    with ShopperStream(app["url"], app["users"], threads=threads, rate=rate) as stream:
        time.sleep(warm_s)
        killed_at = time.time()
        back_s = nodes.restart_gcs(down_s=down_s)
        back_at = time.time()
        time.sleep(after_s)
    failed, latency = stream.failed(), [r[3] for r in stream.requests]
    window = [r[3] for r in stream.requests if killed_at <= r[0] < back_at]
    total = len(stream.requests)
    return {"requests": total, "failed": len(failed), "failed_rate": len(failed) / max(1, total),
            "failed_first": [f"{r[1]} {r[2]}" for r in failed[:10]],
            "requests_while_gcs_down": len(window), "failed_while_gcs_down": len(stream.failed(killed_at, back_at)),
            "p50_ms": 1000 * _percentile(latency, 0.5), "p99_ms": 1000 * _percentile(latency, 0.99),
            "p99_ms_while_gcs_down": 1000 * _percentile(window, 0.99), "gcs_down_s": back_at - killed_at,
            "gcs_answering_s_after_start": back_s}
