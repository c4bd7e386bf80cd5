"""`raycart retrain` on a real local Ray cluster: a day of logged traffic (epsilon-greedy over the
serving model's rankings, exact propensities, simulated clicks) is merged into the shop's data, the
serving ranker is retrained warm with Ray Train, gated on holdout NDCG@10 and off-policy
evaluation, and a deliberately worse model is refused by the same gate."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from chaos import registered_checkpoints
from streams import RecommendStream

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def logged(tiny_shop, tmp_path_factory):
    """Impressions and events as the serving app writes them (through the real FeedbackLog)."""
    from serving.feedback.log import FeedbackLog, FeedbackLogConfig
    from training.data.dataset import load_dataset
    from training.evaluation.ope.slate_target import model_ranker

    root = tmp_path_factory.mktemp("retrain-log")
    ds = load_dataset(tiny_shop["data"])
    users = ds.users["external_id"].to_pylist()
    rank = model_ranker(tiny_shop["ranker"], tiny_shop["data"])  # every candidate, as the serving policy explores
    rng = np.random.default_rng(0)
    chosen = [users[i] for i in rng.integers(0, len(users), 400)]
    rankings = rank(chosen)
    log = FeedbackLog(FeedbackLogConfig(root=str(root / "feedback"), wal_dir=str(root / "wal")), "sim")
    now = time.time()
    eps = 0.3
    for r, (user, ranking) in enumerate(zip(chosen, rankings)):
        remaining, rows = list(ranking), []
        for pos in range(5):
            greedy = rng.random() >= eps
            j = 0 if greedy else int(rng.integers(len(remaining)))
            item = remaining.pop(j)
            rows.append({"request_id": f"r{r}", "user_id": user, "context_hash": "c", "num_candidates": len(ranking),
                         "item_id": item, "position": pos, "propensity": eps / (len(remaining) + 1) + (1 - eps) * (j == 0),
                         "greedy": j == 0, "score": 0.0, "model_version": "v1", "policy_version": "sim",
                         "timestamp": now + r})
        log.append_many("impressions", rows)
        for row in rows:  # shoppers engage more with what the model ranks first
            if rng.random() < 0.25 / (1 + row["position"]):
                log.append("events", {"request_id": row["request_id"], "item_id": row["item_id"], "event": "click",
                                      "timestamp": now + r + 1})
                break
    log.close()
    return {"feedback": str(root / "feedback"), "root": root}


def _digest(root) -> dict:
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(Path(root).rglob("*")) if f.is_file()}


def _kill_after_first_checkpoint(cmd: list[str], env: dict, runs: Path, log: Path) -> None:
    """Run ``cmd`` and SIGKILL its process group once Ray Train has registered a checkpoint."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 300
        while registered_checkpoints(runs) < 1:
            assert proc.poll() is None, f"retrain ended before its first checkpoint:\n{log.read_text()[-3000:]}"
            assert time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_retrain_killed_midway_then_resumed_merges_trains_warm_gates_and_reports(tiny_shop, logged, ray_cluster):
    """A retrain SIGKILLed after its first checkpoint leaves the serving model and the log as they
    were and publishes nothing; run again, it resumes from the checkpoint (no epoch repeated),
    trains on the shown slates too, gates and reports."""
    from serving.jobs.retrain import RetrainJob, retrain

    work = logged["root"] / "work"
    model_before, log_before = _digest(tiny_shop["ranker"]), _digest(logged["feedback"])
    raycart = Path(sys.executable).with_name("raycart")
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    epochs = 4
    _kill_after_first_checkpoint(
        [str(raycart), "retrain", "--feedback", logged["feedback"], "--data", tiny_shop["data"], "--model",
         tiny_shop["ranker"], "--work", str(work), "--epochs", str(epochs), "--workers", "1",
         "--recent-weight", "3", "--replay", "0.5", "--warmup-steps", "4"],
        env, work / "runs", logged["root"] / "killed-retrain.log")
    assert _digest(tiny_shop["ranker"]) == model_before and _digest(logged["feedback"]) == log_before
    assert not (work / "decisions").exists() and not list(work.glob("candidates/*/model.json"))

    t0 = time.time()
    report = retrain(RetrainJob(feedback=logged["feedback"], data=tiny_shop["data"], model=tiny_shop["ranker"],
                                work=str(work), epochs=epochs, workers=1, bootstrap=200, recent_weight=3.0,
                                replay=0.5, warmup_steps=4))
    assert time.time() - t0 < 600  # the target: a decision in under 10 minutes here
    assert report["training"]["resumes"] == 1, report["training"]
    # none repeated, none lost; early stopping may end it before the 4th (the warm start counts as the best so far)
    ran = report["training"]["epochs"]
    assert ran == list(range(1, len(ran) + 1)) and 2 <= len(ran) <= epochs, ran
    assert (report["training"]["recent_weight"], report["training"]["replay"], report["training"]["warmup_steps"]) \
        == (3.0, 0.5, 4)
    assert report["feedback"]["kept"] > 20
    assert report["exposure"]["lists"] > 0 and report["exposure"]["examination"]["exploration_impressions"] > 0
    assert set(report["metrics"]) == {"serving", "candidate"}
    assert "difference" in report["ope"] and report["ope"]["requests"] == 400
    d = report["decision"]
    assert isinstance(d["promote"], bool) and len(d["reasons"]) == 2
    saved = json.loads(Path(report["report"]).read_text())
    assert saved["decision"] == d and saved["version"] == report["version"]
    assert (Path(report["candidate"]) / "model.json").exists()
    assert _digest(tiny_shop["ranker"]) == model_before and _digest(logged["feedback"]) == log_before
    assert not (work / "models").exists()  # no app given: nothing promoted


def test_a_deliberately_worse_model_is_refused_and_a_better_one_promoted(tiny_shop, logged):
    from serving.jobs.retrain import gate
    from training.data.feedback import read_feedback
    from training.evaluation.compare import paired_bootstrap
    from training.evaluation.ope.slate_target import compare_targets, model_ranker
    from training.evaluation.run import evaluate_model_dir

    worse = logged["root"] / "worse-model"
    shutil.copytree(tiny_shop["ranker"], worse)
    state = dict(np.load(worse / "state" / "ranker_weights.npz"))
    rng = np.random.default_rng(0)
    for key, value in state.items():  # scramble every learned float table
        if value.dtype.kind == "f" and value.size > 1:
            state[key] = rng.permutation(value.ravel()).reshape(value.shape)
    np.savez(worse / "state" / "ranker_weights.npz", **state)
    data = tiny_shop["data"]
    good_users, worse_users = {}, {}
    good = evaluate_model_dir(data, tiny_shop["ranker"], per_user=good_users)
    bad = evaluate_model_dir(data, str(worse), per_user=worse_users)
    assert bad["NDCG@10"] < good["NDCG@10"] - 0.01, (bad["NDCG@10"], good["NDCG@10"])
    imp, ev = read_feedback(logged["feedback"], "impressions"), read_feedback(logged["feedback"], "events")
    ope = compare_targets(imp, ev, model_ranker(tiny_shop["ranker"], data), model_ranker(str(worse), data), 0.05,
                          bootstrap=200)
    paired = paired_bootstrap(good_users["NDCG@10"], worse_users["NDCG@10"])
    decision = gate(good, bad, paired, ope, ndcg_tolerance=0.002, min_ess=10)
    assert not decision["promote"] and not decision["holdout_ok"], decision
    # ... and the other way round, the better model replacing the scrambled one is promoted
    ope = compare_targets(imp, ev, model_ranker(str(worse), data), model_ranker(tiny_shop["ranker"], data), 0.05,
                          bootstrap=200)
    paired = paired_bootstrap(worse_users["NDCG@10"], good_users["NDCG@10"])
    decision = gate(bad, good, paired, ope, ndcg_tolerance=0.002, min_ess=10)
    assert decision["promote"] and decision["holdout_ok"] and paired["ci95"][0] > 0, decision


def test_the_app_retrains_on_schedule_and_promotes_under_load(tiny_shop, logged, ray_cluster):
    """``retrain_every_events`` on: shoppers' feedback through HTTP makes the app's schedule start a
    retrain (a detached job), whose gate passes and whose promotion swaps model and data while
    clients keep asking -- every request answered, the answers switch to the retrained version."""

    import requests
    from ray import serve

    from serving.deploy.app import build_app
    from serving.jobs.retrainer import RETRAINER
    from serving.state.redis_server import free_port

    root = logged["root"] / "scheduled"
    shutil.copytree(logged["feedback"], root / "feedback")  # yesterday's log, then today's traffic
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = {"model_dir": tiny_shop["ranker"], "data_dir": tiny_shop["data"], "feedback_root": str(root / "feedback"),
            "wal_dir": str(root / "wal"), "policy_state": str(root / "policy.npz"), "items_root": str(root / "items"),
            "state_dir": str(root / "state"), "request_timeout_s": 60.0, "trust_loopback": True,  # no keys: local
            "replica_cpus": 0.1,  # leave a CPU of the 2 for the retrain's Ray Train worker
            "retrain_every_events": 5, "retrain_poll_s": 1.0, "retrain_work": str(root / "work"),
            "retrain_epochs": 1, "retrain_ndcg_tolerance": 0.5}
    try:
        serve.run(build_app(args), name="raycart", route_prefix="/")
        users = tiny_shop_users(tiny_shop)[:8]
        for user in users[:6]:  # today's feedback: 6 clicks, the schedule wants 5
            rec = requests.post(url + "/recommend", json={"user_id": user, "k": 3}, timeout=60).json()
            fb = requests.post(url + "/feedback", json={"request_id": rec["request_id"],
                                                        "item_id": rec["items"][0]["item_id"], "event": "click"},
                               timeout=60)
            assert fb.status_code == 200, fb.text
        deadline = time.time() + 400
        with RecommendStream(url, users[6:8], pause_s=0.05) as stream:
            stream.wait_until(lambda answers: len(answers) > 4 and all(str(a[1]).startswith("retrain-")
                                                                        for a in answers[-4:]),
                              timeout_s=400, poll_s=1)
        answers = stream.answers
        retrainer = ray_cluster.get_actor(RETRAINER, namespace="raycart")
        # the job returns once serve.run has the app running: old replicas may still be draining
        # after the answers switched
        status = ray_cluster.get(retrainer.status.remote())
        while status["last"] is None and time.time() < deadline + 120:
            time.sleep(1)
            status = ray_cluster.get(retrainer.status.remote())
        assert status["last"] is not None and "error" not in status["last"], status
        decisions = list((root / "work" / "decisions").glob("*.json"))
        assert decisions, f"no retrain decided: {status}"
        report = json.loads(decisions[0].read_text())
        assert report["decision"]["promote"], report["decision"]
        assert report["feedback"]["events"] >= 195 + 6  # the base log and today's feedback
        failed = [a for a in answers if a[0] != 200]
        assert not failed, failed[:3]
        versions = [a[1] for a in answers]
        assert versions[0] == "v1" and versions[-1] == report["version"], (versions[:2], versions[-2:], status)
        ready = requests.get(url + "/readyz", timeout=60).json()
        assert ready["model_version"] == report["version"]
    finally:
        serve.shutdown()
        try:
            ray_cluster.kill(ray_cluster.get_actor(RETRAINER, namespace="raycart"))
        except ValueError:
            pass


def tiny_shop_users(tiny_shop) -> list[str]:
    from training.data.dataset import load_dataset

    return load_dataset(tiny_shop["data"]).users["external_id"].to_pylist()
