"""The Serve app on a real multi-node Ray cluster (issue 15): deployed with `serve deploy` (token
auth on, the project in the app's ``runtime_env``, model, data, feedback log and policy state on
the SeaweedFS S3 server, user state in a real Redis), its replicas spread over two worker nodes,
a bounded stream of shoppers (``/recommend`` then ``/feedback``) while one worker node is lost
(every process of it SIGKILLed) and a replacement joins. Asserts: replicas on both nodes, fewer
than 1 % failed requests, the app back to all replicas running, and every acknowledged feedback
event and every answered slate in the published log afterwards -- including those acknowledged by
the Ingress replica on the lost node (``feedback_ack: shared``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from multinode_app import SPREAD, deploy_app, lose_a_node, replicas, restart_gcs_under_load
from ray_nodes import RayNodes

from serving.redis_server import LocalRedis

pytestmark = [pytest.mark.integration, pytest.mark.multinode]


@pytest.fixture
def served(tiny_shop, s3_server, tmp_path, request):
    """The cluster (head without CPUs, worker nodes a and b), Redis, and the app deployed on it;
    ``indirect`` param ``"gcs-ft"``: the head's GCS keeps its tables in a second Redis."""
    redis = LocalRedis(tmp_path / "redis").start()
    gcs_redis = LocalRedis(tmp_path / "gcs-redis").start() if getattr(request, "param", None) == "gcs-ft" else None
    nodes = RayNodes(node_env=s3_server["env"])
    try:
        # Serve's controller and proxy; no replicas
        nodes.start_head(num_cpus=0, gcs_redis=f"127.0.0.1:{gcs_redis.port}" if gcs_redis else None)
        nodes.add_node("a", num_cpus=2)
        nodes.add_node("b", num_cpus=2)
        app = deploy_app(nodes, s3_server, redis.url, Path(tiny_shop["ranker"]), Path(tiny_shop["data"]), tmp_path)
        yield {**app, "nodes": nodes, "s3": s3_server}
    finally:
        nodes.stop()
        redis.stop()
        if gcs_redis:
            gcs_redis.stop()


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


@pytest.mark.parametrize("served", ["gcs-ft"], indirect=True)
def test_serving_keeps_answering_while_the_gcs_restarts(served):
    nodes = served["nodes"]
    run = restart_gcs_under_load(nodes, served, warm_s=10, down_s=10, after_s=15)
    print(run)
    assert run["requests_while_gcs_down"] > 20  # the stream went on while the GCS was down
    assert run["failed_rate"] < 0.01, run["failed_first"]
    assert len(nodes.alive_ids()) == 3  # head and both worker nodes registered again
    assert replicas(nodes) == {d: ["a", "b"] for d in SPREAD}  # the same replicas, none restarted elsewhere
