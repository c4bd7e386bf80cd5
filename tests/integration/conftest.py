"""Real services for integration tests: a local Ray cluster and a SeaweedFS S3 server, both
started once per session on 127.0.0.1 and always shut down."""

from __future__ import annotations

import os

import pytest
from local_s3 import LocalS3

from serving.state.redis_server import free_port

METRICS_PORT = 0  # Ray's Prometheus export port for the session cluster (chosen by ray_cluster)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server (SeaweedFS, :class:`local_s3.LocalS3`) on 127.0.0.1 that checks
    signatures. Yields the environment (endpoint, credentials) that clients need."""
    try:
        server = LocalS3(tmp_path_factory.mktemp("seaweedfs")).start()
    except FileNotFoundError as exc:
        pytest.fail(str(exc))
    try:
        yield {"env": server.env, "bucket": server.bucket, "client": server.client, "pid": server.proc.pid}
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    for key, value in s3_server["env"].items():
        monkeypatch.setenv(key, value)
    return s3_server


@pytest.fixture(scope="session")
def ray_cluster(s3_server):
    """A local Ray cluster capped at 2 CPUs, bound to 127.0.0.1, with S3 credentials in the
    environment before ``ray.init`` so workers inherit them. Its metrics are exported on
    ``METRICS_PORT`` (:func:`ray_metrics_url`; Ray binds it to the node address, 127.0.0.1)."""
    import ray

    global METRICS_PORT
    METRICS_PORT = free_port()
    os.environ.update(s3_server["env"])
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             configure_logging=False, log_to_driver=False, _metrics_export_port=METRICS_PORT)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def ray_metrics_url(ray_cluster) -> str:
    """Where the session cluster's Prometheus metrics are scraped."""
    return f"http://127.0.0.1:{METRICS_PORT}/metrics"


@pytest.fixture(scope="session")
def tiny_shop(ray_cluster, tmp_path_factory):
    """A small synthetic shop and a tiny retriever + ranker trained on it with Ray Train (once
    per session; the Serve tests deploy it under their own settings)."""
    from training.data.prepare import prepare
    from training.jobs.ranker_data import RankerJob
    from training.jobs.train_ranker import train_ranker
    from training.jobs.train_retriever import RetrieverJob, train_retriever
    from training.models.ranker_config import RankerConfig
    from training.models.retriever_config import RetrieverConfig

    root = tmp_path_factory.mktemp("tiny-shop")
    data = str(root / "shop")
    prepare("synthetic", None, data, num_users=300, num_items=200, num_events=12_000, images=False)
    train_retriever(RetrieverJob(data=data, out=str(root / "retriever"), workers=1, storage=str(root / "runs"),
                                 model=RetrieverConfig(dim=16, layers=1, heads=1, max_len=10, epochs=3, patience=3)))
    train_ranker(RankerJob(data=data, retriever=str(root / "retriever"), out=str(root / "ranker"), workers=1,
                           storage=str(root / "runs"),
                           model=RankerConfig(**{**RankerConfig.tiny().to_dict(), "epochs": 2, "eval_candidates": 50})))
    return {"data": data, "ranker": str(root / "ranker"), "retriever": str(root / "retriever"), "root": root}


@pytest.fixture(scope="session")
def planted_shop(tmp_path_factory) -> str:
    """A synthetic shop whose users have planted tastes (400 users, 300 items, 20,000 events)."""
    from training.data.prepare import prepare

    out = tmp_path_factory.mktemp("planted") / "synthetic"
    prepare("synthetic", None, str(out), num_users=400, num_items=300, num_events=20_000, images=False)
    return str(out)


@pytest.fixture(scope="session")
def planted_retriever(ray_cluster, s3_server, planted_shop, tmp_path_factory) -> dict:
    """A retriever trained on ``planted_shop`` by 2 DDP workers, once per session, its checkpoints
    on S3 and the listening sockets watched while it ran: ``test_train_retriever.py`` checks the
    run, the ranker tests rerank it."""
    from netwatch import ListenerWatch

    from training.jobs.train_retriever import RetrieverJob, train_retriever
    from training.models.retriever_config import RetrieverConfig

    root = tmp_path_factory.mktemp("planted-retriever")
    config = RetrieverConfig(dim=32, layers=1, heads=1, dropout=0.1, max_len=20, batch_size=64, epochs=20,
                             patience=5, lr=3e-3)
    job = RetrieverJob(data=planted_shop, out=str(root / "model"), model=config, workers=2,
                       storage=f"s3://{s3_server['bucket']}/planted-runs")  # ray_cluster set the S3 env
    with ListenerWatch() as watch:  # the loopback-only rule holds while DDP is running, too
        summary = train_retriever(job)
    return {"data": planted_shop, "model": job.out, "summary": summary, "watch": watch, "runs": "planted-runs/"}
