"""Datasets, metrics and model directories on a real S3-compatible server (SeaweedFS)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from training.common.errors import StorageError
from training.data.dataset import load_dataset, save_dataset
from training.data.sources.synthetic import SyntheticConfig, prepare

pytestmark = pytest.mark.integration
RAYCART = str(Path(sys.executable).with_name("raycart"))


def test_dataset_round_trip_on_s3(s3_env, tiny_dataset):
    uri = f"s3://{s3_env['bucket']}/roundtrip"
    p = prepare(None, **SyntheticConfig.tiny().__dict__)
    save_dataset(p.dataset, uri, extra=p.extra)
    keys = [o["Key"] for o in s3_env["client"].list_objects_v2(Bucket=s3_env["bucket"],
                                                               Prefix="roundtrip/")["Contents"]]
    assert "roundtrip/dataset.json" in keys and "roundtrip/images/0.jpg" in keys
    ds = load_dataset(uri)
    assert ds.events.to_pydict() == tiny_dataset.events.to_pydict()  # schemas differ only in nullability
    with pytest.raises(StorageError, match="already exists"):
        save_dataset(p.dataset, uri)


def test_overwrite_on_s3_replaces_contents_and_cleans_staging(s3_env, tiny_dataset):
    from dataclasses import replace

    uri = f"s3://{s3_env['bucket']}/overwrite"
    save_dataset(tiny_dataset, uri)
    smaller = replace(tiny_dataset, events=tiny_dataset.events.slice(0, 100))
    save_dataset(smaller, uri, overwrite=True)
    assert load_dataset(uri).events.num_rows == 100
    keys = [o["Key"] for o in s3_env["client"].list_objects_v2(Bucket=s3_env["bucket"])["Contents"]]
    assert not [k for k in keys if "staging" in k]


def test_cli_end_to_end_on_s3(s3_env, tmp_path):
    env = {**os.environ, **s3_env["env"]}
    data = f"s3://{s3_env['bucket']}/cli-shop"
    proc = subprocess.run([RAYCART, "data", "prepare", "--source", "synthetic", "--output", data,
                           "--num-users", "60", "--num-items", "120", "--num-events", "3000", "--no-images"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = f"s3://{s3_env['bucket']}/results/pop.json"
    proc = subprocess.run([RAYCART, "baseline", "--data", data, "--model", "pop", "--out", out,
                           "--save", f"s3://{s3_env['bucket']}/models/pop"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(s3_env["client"].get_object(Bucket=s3_env["bucket"], Key="results/pop.json")["Body"].read())
    assert 0 <= metrics["NDCG@10"] <= 1 and metrics["users"] > 0
    proc = subprocess.run([RAYCART, "evaluate", "--data", data, "--model", f"s3://{s3_env['bucket']}/models/pop"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"NDCG@10 {metrics['NDCG@10']:.4f}" in proc.stdout


def test_wrong_credentials_fail_clearly_and_write_nothing(s3_env, tmp_path):
    env = {**os.environ, **s3_env["env"], "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    proc = subprocess.run([RAYCART, "data", "prepare", "--source", "synthetic", "--output",
                           f"s3://{s3_env['bucket']}/denied", "--num-users", "60", "--num-items", "120",
                           "--num-events", "3000", "--no-images"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "access denied" in lines[0] and "AWS_SECRET_ACCESS_KEY" in lines[0], proc.stderr
    listing = s3_env["client"].list_objects_v2(Bucket=s3_env["bucket"], Prefix="denied/")
    assert listing.get("KeyCount", 0) == 0
    proc = subprocess.run([RAYCART, "baseline", "--data", f"s3://{s3_env['bucket']}/cli-shop", "--model", "pop"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "access denied" in proc.stderr


class _FailsAfter:
    """The real S3 filesystem, whose server-side copies start failing after ``n`` (a network
    fault in the middle of a publish)."""

    def __init__(self, fs, n: int):
        self.fs, self.left = fs, n

    def copy_file(self, src, dest):
        if self.left <= 0:
            raise OSError("injected: connection reset during copy")
        self.left -= 1
        return self.fs.copy_file(src, dest)

    def __getattr__(self, name):
        return getattr(self.fs, name)


def test_an_s3_overwrite_never_deletes_the_live_copy_first(s3_env, tmp_path):
    """A publish that fails half-way through leaves every live file readable (the old code
    deleted the live directory before copying the new one in)."""
    from training.common import storage
    from training.common.storage import _publish_s3

    uri = f"s3://{s3_env['bucket']}/live-model"
    with storage.atomic_output_dir(uri) as out:
        for name in ("weights.bin", "extra.bin", "model.json"):
            (out / name).write_text(f"v1 {name}")
    new = tmp_path / "v2"
    new.mkdir()
    for name in ("weights.bin", "model.json"):
        (new / name).write_text(f"v2 {name}")
    fs, dest = storage.resolve(uri)
    with pytest.raises(Exception, match="injected"):
        _publish_s3(new, _FailsAfter(fs, 1), dest, uri, replace=True, publish_last="model.json")
    assert storage.read_bytes(f"{uri}/model.json") == b"v1 model.json"  # the manifest still names v1
    assert storage.read_bytes(f"{uri}/extra.bin") == b"v1 extra.bin"  # nothing of the live copy deleted
    _publish_s3(new, fs, dest, uri, replace=True, publish_last="model.json")  # a retry completes
    assert storage.read_bytes(f"{uri}/model.json") == b"v2 model.json"
    assert not storage.exists(f"{uri}/extra.bin")  # pruned once the new version is in place
    keys = [o["Key"] for o in s3_env["client"].list_objects_v2(Bucket=s3_env["bucket"], Prefix="live-model")["Contents"]]
    assert not [k for k in keys if "staging" in k]
