"""The online loop on a real Serve app over HTTP: simulated shoppers whose tastes switch (the
learning app recovers, the same app with learning off does not), and both user-state backends
losing their process (the embedded store's replica SIGKILLed, the Redis server SIGKILLed)
without losing an acknowledged event; a state backend that is down degrades answers, never 500s."""

import signal
import subprocess
import time

import numpy as np
import pytest
import requests

from serving.commands.simulator import Shop, SimConfig, simulate
from serving.state.redis_server import LocalRedis, free_port
from training.jobs.ranker_data import RankerJob
from training.jobs.train_ranker import train_ranker
from training.jobs.train_retriever import RetrieverJob, train_retriever
from training.models.ranker_config import RankerConfig
from training.models.retriever_config import RetrieverConfig

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def loop(ray_cluster, tmp_path_factory):
    """A small shop with strong planted tastes and models trained well enough to follow them."""
    from ray import serve

    from training.data.prepare import prepare

    root = tmp_path_factory.mktemp("loop")
    data = str(root / "shop")
    prepare("synthetic", None, data, num_users=1200, num_items=300, num_events=40_000, num_categories=10,
            num_colours=3, taste_strength=0.9, images=False)
    train_retriever(RetrieverJob(data=data, out=str(root / "retriever"), workers=1, storage=str(root / "runs"),
                                 valid_users=200, model=RetrieverConfig(dim=32, layers=1, heads=1, max_len=20,
                                                                        lr=0.003, epochs=10, patience=3)))
    train_ranker(RankerJob(data=data, retriever=str(root / "retriever"), out=str(root / "ranker"), workers=1,
                           storage=str(root / "runs"),
                           model=RankerConfig(dim=32, hidden=64, max_len=20, train_candidates=50, eval_candidates=60,
                                              epochs=3, patience=2)))
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield {"url": f"http://127.0.0.1:{port}", "data": data, "ranker": str(root / "ranker"), "root": root}
    serve.shutdown()


def _deploy(loop, name: str, **extra) -> dict:
    from ray import serve

    from serving.deploy.app import build_app

    work = loop["root"] / name
    args = {"model_dir": loop["ranker"], "data_dir": loop["data"], "feedback_root": str(work / "feedback"),
            "wal_dir": str(work / "wal"), "policy_state": str(work / "policy.npz"), "items_root": str(work / "items"),
            "state_dir": str(work / "state"), "trust_loopback": True, **extra}  # no keys: local clients
    serve.run(build_app(args), name="raycart", route_prefix="/")
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if requests.get(loop["url"] + "/readyz", timeout=10).status_code == 200:
                return args
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise AssertionError("app not ready")


def test_learning_app_recovers_after_the_drift_and_the_frozen_one_does_not(loop):
    shop = Shop.load(loop["data"])
    cfg = SimConfig(rounds=9, drift_after=2, shoppers=60, k=5, concurrency=4, seed=1)
    runs = {}
    for arm, extra in [("learning", {}), ("frozen", {"realtime_state": False, "policy_learning": False})]:
        _deploy(loop, arm, **extra)
        runs[arm] = simulate(loop["url"], shop, cfg, progress=lambda line: None)
    learn, frozen = runs["learning"], runs["frozen"]
    for r in (learn, frozen):
        assert r["summary"]["failed_requests"] == 0
    # the models follow the planted tastes (the frozen app shows what they rank); the learning app
    # explores as well and on this small shop (300 items, a weak model) can show fewer taste items
    # before the drift (seen: 0.24-0.5, and 0.33 against the frozen app's 0.55 in a fresh-clone run
    # of 2026-12-07, its first round 0.20 before any feedback of its own -- the policy learning
    # within the round; the synthetic shop of benchmarks/closed_loop.py does not show this), so for
    # it only "better than chance" is asserted there
    assert frozen["summary"]["stationary_share"] > 2 * frozen["summary"]["stationary_chance"], frozen["rounds"]
    assert learn["summary"]["stationary_share"] > learn["summary"]["stationary_chance"], learn["rounds"]
    late = lambda r: np.mean([x["taste_share"] for x in r["rounds"][-2:]])  # noqa: E731
    chance = learn["summary"]["drift_chance"]
    assert late(frozen) < 1.5 * chance, late(frozen)  # without learning: stuck on the old tastes
    # seen here: learning 0.20-0.27, frozen 0.075-0.09, chance 0.10 after 5-6 drift rounds (sd of a share ~0.03)
    assert late(learn) > late(frozen) + 0.06 and late(learn) > 1.5 * chance, (late(learn), late(frozen), chance)


def _pids(deployment: str) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    return sorted(int(line.split()[0]) for line in out.splitlines() if f"ServeReplica:raycart:{deployment}" in line)


def _engage(url: str, user: str, n: int) -> tuple[list[str], list[int]]:
    """Click ``n`` items of one answer; returns them and every status seen."""
    rec = requests.post(url + "/recommend", json={"user_id": user, "k": n}, timeout=60).json()
    clicked = [i["item_id"] for i in rec["items"]]
    codes = [requests.post(url + "/feedback", json={"request_id": rec["request_id"], "item_id": x, "event": "click"},
                           timeout=60).status_code for x in clicked]
    return clicked, codes


def test_embedded_state_store_killed_loses_no_acknowledged_event(loop):
    url = loop["url"]
    _deploy(loop, "embedded-kill")
    user = "U0000007"
    clicked, codes = _engage(url, user, 3)
    assert codes == [200, 200, 200]
    (pid,) = _pids("UserStateStore")
    subprocess.run(["kill", f"-{signal.SIGKILL.value}", str(pid)], check=True)
    statuses, states = [], []
    deadline = time.time() + 120
    while time.time() < deadline:  # answers go on while Serve replaces the store
        r = requests.post(url + "/recommend", json={"user_id": user, "k": 5}, timeout=60)
        statuses.append(r.status_code)
        states.append(r.json().get("state"))
        if r.status_code == 200 and r.json()["state"] == "live":
            break
        time.sleep(0.5)
    assert set(statuses) == {200}, statuses
    after = r.json()
    assert after["live_history"] == 3 and not set(clicked) & {i["item_id"] for i in after["items"]}, states


def test_redis_state_killed_and_down_degrades_then_recovers(loop, tmp_path):
    url = loop["url"]
    redis = LocalRedis(tmp_path / "redis").start()
    try:
        _deploy(loop, "redis-kill", user_state="redis", redis_url=redis.url, state_timeout_s=0.5)
        user = "U0000011"
        clicked, codes = _engage(url, user, 2)
        assert codes == [200, 200]
        redis.kill()  # SIGKILL: only what its append-only file holds survives
        ready = requests.get(url + "/readyz", timeout=60).json()
        assert ready["status"] == "degraded" and ready["user_state"] == "unavailable"
        down = requests.post(url + "/recommend", json={"user_id": user, "k": 5}, timeout=60)
        assert down.status_code == 200 and down.json()["state"] == "unavailable" and down.json()["items"]
        fb = requests.post(url + "/feedback", json={"request_id": down.json()["request_id"],
                                                    "item_id": down.json()["items"][0]["item_id"], "event": "click"},
                           timeout=60)
        assert fb.status_code == 503 and "retry" in fb.json()["detail"]
        redis.start()  # same port and directory
        back = requests.post(url + "/recommend", json={"user_id": user, "k": 5}, timeout=60).json()
        assert back["state"] == "live" and back["live_history"] == 2
        assert not set(clicked) & {i["item_id"] for i in back["items"]}
        assert requests.get(url + "/readyz", timeout=60).json()["user_state"] == "ok"
    finally:
        redis.stop()
