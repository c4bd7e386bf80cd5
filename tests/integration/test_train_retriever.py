"""Ray Train on a real local cluster: 2 DDP workers learn the synthetic shop's planted tastes, with
their checkpoints on S3."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from training.baselines.run import run_baseline

pytestmark = pytest.mark.integration
RAYCART = str(Path(sys.executable).with_name("raycart"))


def test_two_workers_learn_planted_tastes(planted_retriever, tmp_path):
    # the run itself: the session fixture planted_retriever (conftest.py), whose model the ranker
    # tests rerank. A worker lost mid-run and the run resumed: tests/integration/test_multinode.py
    # (its whole node is lost) and test_train_ranker.py (a worker process SIGKILLed)
    shop, model, summary, watch = (planted_retriever[k] for k in ("data", "model", "summary", "watch"))
    assert watch.samples >= 5 and not watch.outside, watch.outside
    model_json = json.loads((Path(model) / "model.json").read_text())
    epochs = [h["epoch"] for h in model_json["history"]]
    assert epochs == list(range(1, len(epochs) + 1))
    pop = run_baseline(shop, "pop")
    assert summary["NDCG@10"] > 2.5 * pop["NDCG@10"], (summary["NDCG@10"], pop["NDCG@10"])
    assert model_json["kind"] == "retriever"
    assert (Path(model) / "items.parquet").exists() and (Path(model) / "learning_curve.png").exists()
    # the exported directory loads and evaluates without Ray, to the same number
    proc = subprocess.run([RAYCART, "evaluate", "--data", shop, "--model", model,
                           "--out", str(tmp_path / "m.json")], capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "m.json").read_text())["NDCG@10"] == pytest.approx(summary["NDCG@10"], abs=1e-6)


def test_the_checkpoints_are_on_s3(planted_retriever, s3_server):
    """The run's checkpoints went to S3 (the model directory on S3, and evaluated from there:
    test_train_ranker.py's S3 test)."""
    listed = s3_server["client"].list_objects_v2(Bucket=s3_server["bucket"], Prefix=planted_retriever["runs"])
    keys = [o["Key"] for o in listed.get("Contents", [])]
    assert any("checkpoint_" in k and k.endswith("state.pt") for k in keys), keys[:20]
