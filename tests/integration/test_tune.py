"""`raycart tune --smoke` as a user runs it: ASHA stops weak trials, the sweep survives its driver
being killed (Tuner.restore), and the exported best model evaluates to the reported number."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from netwatch import ListenerWatch

from training.data.cli import prepare
from training.evaluation.run import evaluate_model_dir

pytestmark = pytest.mark.integration
RAYCART = str(Path(sys.executable).with_name("raycart"))


def _kill_session(sid: int) -> None:
    out = subprocess.run(["ps", "-eo", "pid=,sess="], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        pid, sess = map(int, line.split())
        if sess == sid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_smoke_sweep_resumes_after_its_driver_dies_and_exports_the_best(tmp_path):
    shop = str(tmp_path / "shop")
    prepare("synthetic", None, shop, num_users=300, num_items=200, num_events=12_000, images=False)
    out, store = tmp_path / "best", tmp_path / "tune"
    cmd = [RAYCART, "tune", "retriever", "--smoke", "--data", shop, "--out", str(out), "--storage", str(store),
           "--name", "smoke"]
    env = {**os.environ, "RAY_ADDRESS": ""}
    with ListenerWatch() as watch:
        # 1. kill the whole driver (and the Ray it started) once the first trial has a checkpoint
        first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                                 start_new_session=True)
        deadline = time.time() + 240
        while time.time() < deadline and not list((store / "smoke" / "train").glob("*/checkpoint_*")):
            time.sleep(0.5)
        assert first.poll() is None, "the sweep ended before it could be interrupted"
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        assert not (store / "smoke" / "summary.json").exists()
        _kill_session(first.pid)  # what Ray started for the killed driver and outlived it
        # 2. the same command resumes it
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=420, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Tuner.restore" in run.stdout
    assert watch.samples > 10 and not watch.outside, watch.outside  # dashboard included: loopback only
    summary = json.loads((store / "smoke" / "summary.json").read_text())
    assert summary["trials"] == 4
    assert summary["stopped_early"] >= 1 and summary["trial_epochs_run"] < summary["trial_epochs_without_asha"]
    assert len(pd.read_csv(store / "smoke" / "trials.csv")) == 4
    assert (store / "smoke" / "trials.png").stat().st_size > 10_000
    # the exported best model loads without Ray and evaluates to the reported test metric
    metrics = evaluate_model_dir(shop, str(out))
    assert metrics["NDCG@10"] == pytest.approx(summary["best"]["test_NDCG@10"], abs=1e-6)
    table = pd.read_csv(store / "smoke" / "trials.csv")
    assert summary["best"]["best_valid_NDCG@10"] == pytest.approx(table["best_valid_NDCG@10"].max())
