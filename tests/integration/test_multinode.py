"""Raycart on a real multi-node Ray cluster (issue 15): a head and worker nodes, each a process with
its own resources (:mod:`ray_nodes`), on 127.0.0.1 with token authentication on.

The training job goes in as a user would send it: `ray job submit` with the token, the project in
the job's ``runtime_env``, checkpoints on the SeaweedFS S3 server. Its two workers are placed one per
node (``--placement STRICT_SPREAD``; asserted from Ray's State API); once the first checkpoint is on
S3 a worker *node* is lost (every process of it SIGKILLed), the run waits for room, the test adds a
replacement node, and the run resumes there from the checkpoint: every epoch once, one resume, and
the job's status and logs readable with `ray job status/logs`."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from netwatch import ListenerWatch
from ray_nodes import RayNodes

# The node-loss test runs in the suite (.ci/test.sh); the tune/stop test is opt-in with the other
# multi-node tests: `pytest -m multinode tests/integration/test_multinode*.py`.
pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
EPOCHS = 5
EXCLUDES = [".venv", ".git", "raycart-work", "benchmarks/results", "*.png", "__pycache__"]


def _job(nodes: RayNodes, *args: str, env: dict) -> subprocess.CompletedProcess:
    return nodes.cli("ray", "job", args[0], "--address", nodes.dashboard, *args[1:], env=env)


def _logs(nodes: RayNodes, submission_id: str, env: dict) -> str:
    out = _job(nodes, "logs", submission_id, env=env)
    return out.stdout + out.stderr


@pytest.fixture
def cluster(s3_server, tmp_path, request):
    """Head (no CPUs) + worker nodes a and b; ``indirect`` param ``"gcs-ft"``: the head's GCS
    keeps its tables in a Redis server (GCS fault tolerance)."""
    from serving.redis_server import LocalRedis

    gcs_redis = LocalRedis(tmp_path / "gcs-redis").start() if getattr(request, "param", None) == "gcs-ft" else None
    nodes = RayNodes(node_env=s3_server["env"])
    try:
        # the head runs the job drivers and Ray's own actors, no workers
        nodes.start_head(num_cpus=0, gcs_redis=f"127.0.0.1:{gcs_redis.port}" if gcs_redis else None)
        nodes.add_node("a", num_cpus=1)
        nodes.add_node("b", num_cpus=1)
        yield nodes
    finally:
        nodes.stop()
        if gcs_redis:
            gcs_redis.stop()


def test_training_spreads_over_nodes_and_resumes_after_losing_one(cluster, s3_server, tmp_path):
    from training.data.cli import prepare

    nodes, bucket, client = cluster, s3_server["bucket"], s3_server["client"]
    data = str(tmp_path / "shop")
    prepare("synthetic", None, data, num_users=1000, num_items=300, num_events=20_000, images=False)
    prefix = f"multinode-{int(time.time())}"
    out = tmp_path / "model"
    env = nodes.env(**s3_server["env"])
    runtime_env = {"working_dir": str(ROOT),
                   "excludes": EXCLUDES,
                   "env_vars": s3_server["env"]}
    with ListenerWatch() as watch:
        submitted = _job(nodes, "submit", "--no-wait", "--submission-id", prefix,
                         "--runtime-env-json", json.dumps(runtime_env), "--",
                         sys.executable, "-m", "training.cli", "train", "retriever", "--data", data,
                         "--out", str(out), "--workers", "2", "--placement", "STRICT_SPREAD",
                         "--storage", f"s3://{bucket}/{prefix}/runs", "--smoke", "--batch-size", "16",
                         "--epochs", str(EPOCHS), "--patience", "100", "--max-failures", "3", env=env)
        assert submitted.returncode == 0, submitted.stdout[-2000:] + submitted.stderr[-2000:]

        def checkpoints() -> int:
            listing = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/runs/")
            return sum(1 for o in listing.get("Contents", []) if o["Key"].endswith("state.pt"))

        deadline = time.time() + 300
        while checkpoints() < 2:  # the first is registered with Ray Train once the second is written
            status = nodes.job_status(prefix)
            assert status in ("PENDING", "RUNNING") and time.time() < deadline, _logs(nodes, prefix, env)[-3000:]
            time.sleep(0.5)
        assert nodes.placed("RayTrainWorker") == ["a", "b"]  # one worker per node, none on the head

        nodes.kill("a")  # the machine is gone: raylet, object store and the worker on it
        time.sleep(2)
        nodes.add_node("c", num_cpus=1)  # the replacement

        deadline = time.time() + 420
        while nodes.job_status(prefix) in ("PENDING", "RUNNING") and time.time() < deadline:
            time.sleep(1)
        logs = _logs(nodes, prefix, env)
        assert nodes.job_status(prefix) == "SUCCEEDED", logs[-4000:]
        shown = _job(nodes, "status", prefix, env=env)  # and as a user reads it
        assert "succeeded" in (shown.stdout + shown.stderr)
        doc = json.loads((out / "model.json").read_text())
        assert [h["epoch"] for h in doc["history"]] == list(range(1, EPOCHS + 1))  # none lost, none repeated
        assert doc["resumes"] >= 1, logs[-6000:]
        assert "[retriever] epoch" in logs and "resumed from checkpoint" in logs  # the progress lines, via ray job logs
        placed = collections.Counter(nodes.names.get(w["node_id"], "head") for w in
                                     nodes.state("actors", class_name="RayTrainWorker"))
        # the first group on a and b; the restarted one on b (survived) and c (the replacement)
        assert placed["a"] == 1 and placed["b"] >= 2 and placed["c"] >= 1, placed
        assert placed["head"] == 0, placed
    assert not watch.outside, f"listening beyond loopback: {sorted(watch.outside)}"


@pytest.mark.multinode
def test_tune_sweep_and_a_stopped_job_through_job_submission(cluster, s3_server, tmp_path):
    """`raycart tune` submitted as a job: its trials run on both worker nodes and the best model
    lands on S3; a training job stopped with `ray job stop` mid-run leaves nothing at its output."""
    from training.data.cli import prepare

    nodes, bucket, client = cluster, s3_server["bucket"], s3_server["client"]
    data = str(tmp_path / "shop")
    prepare("synthetic", None, data, num_users=300, num_items=200, num_events=12_000, images=False)
    prefix = f"mn-jobs-{int(time.time())}"
    env = nodes.env(**s3_server["env"])
    runtime_env = json.dumps({"working_dir": str(ROOT), "excludes": EXCLUDES, "env_vars": s3_server["env"]})

    def keys(under: str) -> list[str]:
        return [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/{under}").get("Contents", [])]

    sweep = _job(nodes, "submit", "--no-wait", "--submission-id", f"{prefix}-tune", "--runtime-env-json", runtime_env,
                 "--", sys.executable, "-m", "training.cli", "tune", "retriever", "--smoke", "--data", data,
                 "--out", f"s3://{bucket}/{prefix}/best", "--storage", f"s3://{bucket}/{prefix}/sweeps",
                 "--max-concurrent", "2", env=env)
    assert sweep.returncode == 0, sweep.stdout[-2000:] + sweep.stderr[-2000:]
    deadline = time.time() + 480
    while nodes.job_status(f"{prefix}-tune") in ("PENDING", "RUNNING") and time.time() < deadline:
        time.sleep(1)
    logs = _logs(nodes, f"{prefix}-tune", env)
    assert nodes.job_status(f"{prefix}-tune") == "SUCCEEDED", logs[-4000:]
    assert any(k.endswith("best/model.json") for k in keys("best/")), keys("")[:20]
    trial_nodes = {nodes.names.get(w["node_id"], "head") for w in nodes.state("actors", class_name="RayTrainWorker")}
    assert trial_nodes == {"a", "b"}, trial_nodes  # two trials at a time: one per worker node

    train = _job(nodes, "submit", "--no-wait", "--submission-id", f"{prefix}-stop", "--runtime-env-json", runtime_env,
                 "--", sys.executable, "-m", "training.cli", "train", "retriever", "--data", data,
                 "--out", f"s3://{bucket}/{prefix}/stopped-model", "--storage", f"s3://{bucket}/{prefix}/runs",
                 "--smoke", "--epochs", "50", "--patience", "100", env=env)
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-2000:]
    deadline = time.time() + 240
    while not any(k.endswith("state.pt") for k in keys("runs/")):
        assert nodes.job_status(f"{prefix}-stop") in ("PENDING", "RUNNING") and time.time() < deadline
        time.sleep(0.5)
    stopped = _job(nodes, "stop", f"{prefix}-stop", env=env)
    assert stopped.returncode == 0, stopped.stdout[-2000:] + stopped.stderr[-2000:]
    deadline = time.time() + 60
    while nodes.job_status(f"{prefix}-stop") not in ("STOPPED", "FAILED", "SUCCEEDED") and time.time() < deadline:
        time.sleep(0.5)
    assert nodes.job_status(f"{prefix}-stop") == "STOPPED"
    time.sleep(3)
    assert keys("stopped-model") == []  # the model directory is published whole at the end, or not at all
    assert not nodes.placed("RayTrainWorker")  # its workers are gone too


@pytest.mark.multinode
@pytest.mark.parametrize("cluster", ["gcs-ft"], indirect=True)
def test_training_goes_on_while_the_gcs_restarts(cluster, s3_server, tmp_path):
    """A 2-worker training job across a GCS kill and restart (tables from Redis): it finishes,
    every epoch once."""
    from training.data.cli import prepare

    nodes, s3 = cluster, s3_server
    data = str(tmp_path / "shop")
    prepare("synthetic", None, data, num_users=600, num_items=200, num_events=12_000, images=False)
    prefix, out = f"gcs-train-{int(time.time())}", tmp_path / "model"
    env = nodes.env(**s3["env"])
    runtime_env = json.dumps({"working_dir": str(ROOT), "excludes": EXCLUDES, "env_vars": s3["env"]})
    submitted = _job(nodes, "submit", "--no-wait", "--submission-id", prefix, "--runtime-env-json", runtime_env,
                     "--", sys.executable, "-m", "training.cli", "train", "retriever", "--data", data,
                     "--out", str(out), "--workers", "2", "--storage", f"s3://{s3['bucket']}/{prefix}/runs",
                     "--smoke", "--epochs", "6", "--patience", "100", "--max-failures", "3", env=env)
    assert submitted.returncode == 0, submitted.stdout[-2000:] + submitted.stderr[-2000:]
    deadline = time.time() + 240
    while not any(o["Key"].endswith("state.pt") for o in s3["client"].list_objects_v2(
            Bucket=s3["bucket"], Prefix=f"{prefix}/runs/").get("Contents", [])):
        assert nodes.job_status(prefix) in ("PENDING", "RUNNING") and time.time() < deadline
        time.sleep(0.5)
    nodes.restart_gcs(down_s=10)
    assert len(nodes.alive_ids()) == 3  # head and both worker nodes registered again
    deadline = time.time() + 300
    while nodes.job_status(prefix) in ("PENDING", "RUNNING") and time.time() < deadline:
        time.sleep(1)
    assert nodes.job_status(prefix) == "SUCCEEDED", _logs(nodes, prefix, env)[-4000:]
    history = json.loads((out / "model.json").read_text())["history"]
    assert [h["epoch"] for h in history] == list(range(1, 7))  # every epoch once
