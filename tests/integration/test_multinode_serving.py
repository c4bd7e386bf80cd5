"""The Serve app on a real multi-node Ray cluster (issue 15): deployed with `serve deploy` (token
auth on, the project in the app's ``runtime_env``, model, data, feedback log and policy state on
the SeaweedFS S3 server, user state in a real Redis), its replicas spread over two worker nodes,
a bounded stream of shoppers (``/recommend`` then ``/feedback``) while one worker node is lost
(every process of it SIGKILLed) and a replacement joins. Asserts: replicas on both nodes, fewer
than 1 % failed requests, the app back to all replicas running, and every acknowledged feedback
event and every answered slate in the published log afterwards -- including those acknowledged by
the Ingress replica on the lost node (``feedback_ack: shared``)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from local_s3 import keys as s3_keys
from multinode_app import SPREAD, deploy_app, lose_a_node, replicas, restart_gcs_under_load
from ray_nodes import head_and_two_nodes
from streams import ShopperStream

from serving.state.redis_server import LocalRedis

pytestmark = [pytest.mark.integration, pytest.mark.multinode]
# cluster/serve.yaml's autoscaling, scaled down: one replica each at rest, quick to react; at most
# one replica of a deployment per node (Serve only prefers to spread: without it a second replica
# may land next to the first)
AUTOSCALED = [{"name": "Ingress", "num_replicas": 1}] + [
    {"name": d, "max_replicas_per_node": 1,
     "autoscaling_config": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1,
                            "upscale_delay_s": 1, "downscale_delay_s": 5}} for d in ("Retriever", "Ranker")]


@pytest.fixture
def served(tiny_shop, s3_server, tmp_path, request):
    """The cluster (head without CPUs, worker nodes a and b), Redis, and the app deployed on it;
    ``indirect`` param ``"gcs-ft"``: the head's GCS keeps its tables in a second Redis;
    ``"autoscale"``: the app with :data:`AUTOSCALED` deployments."""
    param = getattr(request, "param", None)
    redis = LocalRedis(tmp_path / "redis").start()
    try:
        with head_and_two_nodes(tmp_path, s3_server["env"], cpus=2, gcs_ft=param == "gcs-ft") as nodes:
            app = deploy_app(nodes, s3_server, redis.url, Path(tiny_shop["ranker"]), Path(tiny_shop["data"]),
                             tmp_path, deployments=AUTOSCALED if param == "autoscale" else None)
            yield {**app, "nodes": nodes, "s3": s3_server}
    finally:
        redis.stop()


def test_serving_survives_losing_a_worker_node(served):
    nodes = served["nodes"]
    assert replicas(nodes) == {d: ["a", "b"] for d in SPREAD}  # spread: one replica per worker node
    run = lose_a_node(nodes, served, served["s3"], node="a", replacement="c")
    print(run)
    assert len(run["lost_writers"]) == 1  # the lost node had an Ingress replica
    assert run["requests"] > 200 and run["acked_events"] > 100
    assert run["stranded_groups"] > 0  # it had acknowledged records that only the shared WAL held
    assert run["failed_rate"] < 0.01, run["failed_first"]
    assert {d: len(n) for d, n in run["placed_after"].items()} == {d: 2 for d in SPREAD}  # back to full capacity
    assert run["lost_events"] == 0 and run["lost_slate_items"] == 0  # every acknowledged record published

    # the retrain job, submitted to the same cluster, learns from that log (all on S3)
    s3, app = served["s3"], served
    work = app["feedback"].rsplit("/", 1)[0] + "/retrain"
    submitted = nodes.submit("retrain", "retrain", "--feedback", app["feedback"], "--data", app["args"]["data_dir"],
                             "--model", app["args"]["model_dir"], "--work", work, "--workers", "1",
                             env_vars=s3["env"], wait=True, timeout=600)
    assert submitted.returncode == 0 and nodes.job_status("retrain") == "SUCCEEDED", submitted.stdout[-4000:]
    bucket, key = work[len("s3://"):].split("/", 1)
    decisions = [k for k in s3_keys(s3["client"], bucket, f"{key}/decisions/") if k.endswith(".json")]
    assert len(decisions) == 1, submitted.stdout[-3000:]


@pytest.mark.parametrize("served", ["gcs-ft"], indirect=True)
def test_serving_keeps_answering_while_the_gcs_restarts(served):
    nodes = served["nodes"]
    run = restart_gcs_under_load(nodes, served, warm_s=10, down_s=10, after_s=15)
    print(run)
    assert run["requests_while_gcs_down"] > 20  # the stream went on while the GCS was down
    assert run["failed_rate"] < 0.01, run["failed_first"]
    assert len(nodes.alive_ids()) == 3  # head and both worker nodes registered again
    assert replicas(nodes) == {d: ["a", "b"] for d in SPREAD}  # the same replicas, none restarted elsewhere


@pytest.mark.parametrize("served", ["autoscale"], indirect=True)
def test_a_load_step_scales_out_over_the_worker_nodes_and_back(served):
    nodes = served["nodes"]
    assert {d: len(n) for d, n in replicas(nodes).items()} == {"Ingress": 1, "Retriever": 1, "Ranker": 1}
    peak: dict[str, set[str]] = {"Retriever": set(), "Ranker": set()}
    peak_count = {"Retriever": 1, "Ranker": 1}
    with ShopperStream(served["url"], served["users"], threads=12, rate=1000.0) as stream:  # closed loop
        deadline = time.time() + 40
        while time.time() < deadline:
            now = replicas(nodes)
            for d in peak:
                peak[d] |= set(now[d])
                peak_count[d] = max(peak_count[d], len(now[d]))
            if all(len(n) == 2 for n in peak.values()) and min(peak_count.values()) >= 2:
                break
            time.sleep(1)
    print(f"load step: {len(stream.requests)} requests; replicas at the peak {peak_count}, on nodes {peak}")
    assert all(c >= 2 for c in peak_count.values()), peak_count  # scaled out
    assert all(n == {"a", "b"} for n in peak.values()), peak  # placed on both worker nodes
    assert len(stream.failed()) < 0.01 * len(stream.requests)
    deadline = time.time() + 90  # and back once the step is over (downscale_delay_s 5)
    while {d: len(n) for d, n in replicas(nodes).items() if d in peak} != {"Retriever": 1, "Ranker": 1}:
        assert time.time() < deadline, replicas(nodes)
        time.sleep(2)
