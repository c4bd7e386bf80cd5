"""`raycart tune --smoke --search optuna` as a user runs it, with its storage and output on S3 (a
real SeaweedFS server): Optuna's TPE proposes the trials (the hand-set defaults first), ASHA stops
weak ones, the sweep survives its driver being killed (Tuner.restore, the searcher's study
included), and the exported best model evaluates to the reported number."""

import io
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pyarrow.fs as pafs
import pytest
from netwatch import ListenerWatch

from training.common import storage
from training.data.prepare import prepare
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


def _has_checkpoint(uri: str) -> bool:
    fs, path = storage.resolve(uri)
    found = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return any("/checkpoint_" in f.path for f in found)


def test_optuna_sweep_on_s3_resumes_after_its_driver_dies_and_exports_the_best(tmp_path, s3_env):
    shop = str(tmp_path / "shop")
    prepare("synthetic", None, shop, num_users=300, num_items=200, num_events=12_000, images=False)
    store = f"s3://{s3_env['bucket']}/tune-{uuid.uuid4().hex[:8]}"
    out = f"{store}/best"
    cmd = [RAYCART, "tune", "retriever", "--smoke", "--search", "optuna", "--data", shop, "--out", out,
           "--storage", store, "--name", "smoke"]
    env = {**os.environ, "RAY_ADDRESS": ""}
    with ListenerWatch() as watch:
        # 1. kill the whole driver (and the Ray it started) once the first trial has a checkpoint
        first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                                 start_new_session=True)
        deadline = time.time() + 240
        while time.time() < deadline and first.poll() is None and not _has_checkpoint(f"{store}/smoke/train"):
            time.sleep(0.5)
        assert first.poll() is None, "the sweep ended before it could be interrupted"
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        _kill_session(first.pid)  # what Ray started for the killed driver and outlived it
        assert not storage.exists(f"{store}/smoke/summary.json")
        # 2. the same command resumes it
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=420, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Tuner.restore" in run.stdout and "search optuna" in run.stdout
    # the console: one line per trial event, none of Tune's status tables
    assert "Trial status" not in run.stdout and "╭" not in run.stdout, run.stdout[-3000:]
    assert len(re.findall(r"\[tune\] trial \w+ (?:ended|stopped by the scheduler) after \d/4 epochs", run.stdout)) >= 2
    assert re.search(r"\[tune\] trial \w+ epoch \d/4: valid_NDCG@10 0\.\d{4} \(sweep best", run.stdout)
    assert watch.samples > 10 and not watch.outside, watch.outside  # dashboard included: loopback only
    summary = json.loads(storage.read_bytes(f"{store}/smoke/summary.json"))
    assert summary["trials"] == 4
    assert summary["stopped_early"] >= 1 and summary["trial_epochs_run"] < summary["trial_epochs_without_asha"]
    table = pd.read_csv(io.BytesIO(storage.read_bytes(f"{store}/smoke/trials.csv")))
    assert len(table) == 4 and table["error"].isna().all()
    assert summary["best"]["best_valid_NDCG@10"] == pytest.approx(table["best_valid_NDCG@10"].max())
    # the searcher was Optuna's TPE, restored with the sweep: its study holds the four finished
    # trials with their metric (Tune keeps the searcher's state next to the sweep), the hand-set
    # defaults first
    import optuna

    fs, root = storage.resolve(f"{store}/smoke")
    states = sorted(f.path for f in fs.get_file_info(pafs.FileSelector(root))
                    if f.base_name.startswith("searcher-state-") and f.base_name.endswith(".pkl"))
    assert len(states) == 2  # the killed driver's and the restored one's (names carry the start time)
    with fs.open_input_stream(states[-1]) as fh:
        state = pickle.loads(fh.read())
    assert isinstance(state["_sampler"], optuna.samplers.TPESampler)
    trials = state["_ot_study"].trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 4
    assert trials[0].params == {"lr": 0.003, "dim": 16, "dropout": 0.1}  # smoke.yaml's defaults
    assert sorted(t.value for t in trials) == pytest.approx(sorted(table["last_valid_NDCG@10"]))
    assert summary["hand_set"] is not None
    for _, row in table.iterrows():
        assert 0.0003 <= row["config/lr"] <= 0.03 and row["config/dim"] in (8, 16)
        assert 0.0 <= row["config/dropout"] <= 0.3
    assert table["config/lr"].nunique() == 4
    assert len(storage.read_bytes(f"{store}/smoke/trials.png")) > 10_000
    # best.yaml: the best trial's configuration, in the format `raycart train --config` reads
    best_yaml = tmp_path / "best.yaml"
    best_yaml.write_bytes(storage.read_bytes(f"{store}/smoke/best.yaml"))
    from training.jobs.config_file import read_config

    section = read_config(best_yaml, "retriever")
    assert {k: section.model[k] for k in summary["best"]["config"]} == summary["best"]["config"]
    assert section.model["epochs"] == 4 and section.run["scheme"] == "loo"
    # the exported best model loads without Ray (from S3) and evaluates to the reported test metric
    metrics = evaluate_model_dir(shop, out)
    assert metrics["NDCG@10"] == pytest.approx(summary["best"]["test_NDCG@10"], abs=1e-6)
