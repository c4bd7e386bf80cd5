"""The Serve application over real HTTP on 127.0.0.1: recommend, feedback, similar, health, bad
input, cold start, the policy learning from feedback, and the durable feedback log."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from netwatch import LOOPBACK, listeners
from streams import RecommendStream

from serving.state.redis_server import free_port
from training.data.feedback import read_feedback

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def app(tiny_shop, tmp_path_factory):
    from ray import serve

    from serving.deploy.app import build_app

    root = tmp_path_factory.mktemp("serve")
    data = tiny_shop["data"]
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = {"model_dir": tiny_shop["ranker"], "data_dir": data, "feedback_root": str(root / "feedback"),
            "wal_dir": str(root / "wal"), "policy_state": str(root / "policy.npz"), "policy_epsilon": 0.0,
            "items_root": str(root / "new-items"), "trust_loopback": True,  # no keys: this test's client is local
            "policy_alpha": 0.0, "state_dir": str(root / "user-state"),
            "explore_candidates": 0, "policy_diversity": 0.0,
            "stale_alpha": 0.0,  # no exploration: rankings are deterministic
            "replica_cpus": 0.1,  # room on the 2-CPU test cluster for a rollout's surge replicas
            # a rollout on 2 shared cores can hold a request past the default 10 s deadline (504)
            "request_timeout_s": 60.0}
    serve.run(build_app(args), name="raycart", route_prefix="/")
    from training.data.dataset import load_dataset

    ds = load_dataset(data)
    yield {"url": f"http://127.0.0.1:{port}", "args": args, "users": ds.users["external_id"].to_pylist(),
           "items": ds.items["external_id"].to_pylist(), "categories": ds.items["category"].to_pylist(),
           "rows": ds.items.to_pylist(), "root": root}
    serve.shutdown()


def test_health_and_readiness(app):
    assert requests.get(app["url"] + "/healthz", timeout=30).json() == {"status": "ok"}
    ready = requests.get(app["url"] + "/readyz", timeout=60)
    assert ready.status_code == 200 and ready.json()["items"] == len(app["items"])
    outside = [f for f in listeners() if not f[0].startswith(LOOPBACK)]
    assert not outside, outside  # the Serve proxy too listens on loopback only


def test_recommend_known_user_with_reasons_and_propensities(app):
    r = requests.post(app["url"] + "/recommend", json={"user_id": app["users"][0], "k": 5,
                                                         "context": {"device": "app"}}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user_known"] and len(body["items"]) == 5 and body["request_id"]
    assert [i["position"] for i in body["items"]] == [0, 1, 2, 3, 4]
    assert all(0 < i["propensity"] <= 1 for i in body["items"])
    assert all(i["reason"]["because_you_saw"] in app["items"] for i in body["items"])
    assert all("p_purchase" in i for i in body["items"])  # the shop has event types: multi-task heads
    assert len({i["item_id"] for i in body["items"]}) == 5


def test_cold_start_anonymous_history_and_filters(app):
    cold = requests.post(app["url"] + "/recommend", json={"user_id": "never-seen-before", "k": 3}, timeout=60)
    assert cold.status_code == 200 and not cold.json()["user_known"] and len(cold.json()["items"]) == 3
    anon = requests.post(app["url"] + "/recommend", json={"history": app["items"][:3], "k": 4}, timeout=60)
    assert anon.status_code == 200 and not ({i["item_id"] for i in anon.json()["items"]} & set(app["items"][:3]))
    category = app["categories"][0]
    only = requests.post(app["url"] + "/recommend", json={"user_id": app["users"][1], "k": 5,
                                                            "filters": {"category": category}}, timeout=60).json()
    assert only["items"] and all(app["categories"][app["items"].index(i["item_id"])] == category
                                 for i in only["items"])
    first = requests.post(app["url"] + "/recommend", json={"user_id": app["users"][1], "k": 3}, timeout=60).json()
    skip = [i["item_id"] for i in first["items"]]
    again = requests.post(app["url"] + "/recommend", json={"user_id": app["users"][1], "k": 3,
                                                             "filters": {"exclude": skip}}, timeout=60).json()
    assert not set(skip) & {i["item_id"] for i in again["items"]}


def test_malformed_requests_get_clear_4xx_never_5xx(app):
    url = app["url"]
    item = app["items"][0]
    cases = [
        ("post", "/recommend", {"k": 0}), ("post", "/recommend", {"k": 101}), ("post", "/recommend", {"k": "ten"}),
        ("post", "/recommend", {"user_id": ""}), ("post", "/recommend", {"history": "not-a-list"}),
        ("post", "/recommend", {"history": ["no-such-item"]}), ("post", "/recommend", {"unknown_field": 1}),
        ("post", "/recommend", {"context": {"nested": {"a": 1}}}), ("post", "/recommend", {"filters": {"price_min": -1}}),
        ("post", "/recommend", {"filters": {"price_min": 9, "price_max": 1}}),
        ("post", "/recommend", {"filters": {"exclude": ["nope"]}}), ("post", "/recommend", {"filters": {"colour": "red"}}),
        ("post", "/recommend", None), ("post", "/recommend", [1, 2]),
        ("post", "/feedback", {}), ("post", "/feedback", {"request_id": "x", "item_id": item}),
        ("post", "/feedback", {"request_id": "x", "item_id": item, "event": "like"}),
        ("post", "/feedback", {"request_id": "", "item_id": item, "event": "click"}),
        ("post", "/feedback", {"request_id": "x", "item_id": "no-such-item", "event": "click"}),
        ("post", "/feedback", {"request_id": "x", "item_id": item, "event": "click", "extra": True}),
        ("get", "/items/no-such-item/similar", None), ("get", f"/items/{item}/similar?k=0", None),
        ("get", f"/items/{item}/similar?k=abc", None), ("get", "/no-such-route", None),
        ("post", "/items", {"item_id": item, "attributes": ["x"]}),  # already in the catalogue: 409
        ("post", "/items", {"item_id": "n1", "price": -3}), ("post", "/items", {"title": "no id"}),
        ("post", "/items", {"item_id": "n2", "attributes": ["never=seen"]}),  # nothing the model reads: 400
        ("post", "/items", {"item_id": "n3", "attributes": "a=b"}), ("post", "/items", None),
    ]
    assert len(cases) >= 20
    for method, path, body in cases:
        if method == "get":
            r = requests.get(url + path, timeout=60)
        elif body is None:
            r = requests.post(url + path, data="{not json", headers={"content-type": "application/json"}, timeout=60)
        else:
            r = requests.post(url + path, json=body, timeout=60)
        assert 400 <= r.status_code < 500, (path, body, r.status_code, r.text)
        assert r.text, (path, body)  # a message, not an empty body


def test_similar_items(app):
    r = requests.get(app["url"] + f"/items/{app['items'][5]}/similar?k=4", timeout=60)
    assert r.status_code == 200 and len(r.json()["similar"]) == 4
    assert app["items"][5] not in {s["item_id"] for s in r.json()["similar"]}


def _pids(deployment: str) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    return sorted(int(line.split()[0]) for line in out.splitlines() if f"ServeReplica:raycart:{deployment}" in line)


def _wait_published(root: str, pairs: set[tuple[str, str]], timeout_s: float = 60) -> None:
    """Wait until every ``(request_id, item_id)`` of ``pairs`` is in the published events (the
    replicas publish sealed WAL segments in the background)."""
    deadline = time.time() + timeout_s
    while True:
        events = read_feedback(root, "events")
        missing = pairs - set(zip(events["request_id"].to_pylist(), events["item_id"].to_pylist()))
        if not missing or time.time() > deadline:
            break
        time.sleep(0.5)
    assert not missing, sorted(missing)[:5]


def _twin(app, idx: int, item_id: str) -> dict:
    """A new catalogue row with the content (attributes, category, brand, price) of item ``idx``."""
    row = app["rows"][idx]
    return {"item_id": item_id, "title": f"new {row['title']}", "category": row["category"], "brand": row["brand"],
            "attributes": row["attributes"] or [], "price": row["price"]}


def test_feedback_changes_the_next_answer_and_is_checked(app):
    """A purchase enters the shopper's real-time history at once: the next answer (from any
    ingress replica) no longer offers the bought item, the policy learned from it, and
    feedback the app cannot vouch for is refused (never issued, not shown) or counted once."""
    url, user = app["url"], app["users"][2]
    req = {"user_id": user, "k": 5, "context": {"device": "web"}}
    before = requests.post(url + "/recommend", json=req, timeout=60).json()
    assert before["state"] == "live" and before["live_history"] == 0
    bought = before["items"][-1]["item_id"]
    fb = requests.post(url + "/feedback", json={"request_id": before["request_id"], "item_id": bought,
                                                "event": "purchase"}, timeout=60)
    assert fb.status_code == 200 and fb.json() == {"status": "recorded", "learned": True, "history": True}
    again = requests.post(url + "/feedback", json={"request_id": before["request_id"], "item_id": bought,
                                                   "event": "purchase"}, timeout=60)
    assert again.status_code == 200 and again.json()["status"] == "duplicate"  # counted once
    after = requests.post(url + "/recommend", json=req, timeout=60).json()
    assert after["live_history"] == 1 and bought not in [i["item_id"] for i in after["items"]]
    assert after["policy_version"] != before["policy_version"]  # it learned
    unknown = requests.post(url + "/feedback", json={"request_id": "never-issued", "item_id": app["items"][0],
                                                     "event": "click"}, timeout=60)
    assert unknown.status_code == 404 and "not issued" in unknown.json()["detail"]
    shown = {i["item_id"] for i in after["items"]}
    other = next(x for x in app["items"] if x not in shown)
    not_shown = requests.post(url + "/feedback", json={"request_id": after["request_id"], "item_id": other,
                                                       "event": "click"}, timeout=60)
    assert not_shown.status_code == 400 and "did not show" in not_shown.json()["detail"]
    # an anonymous session: its feedback builds its own real-time history, under its session id
    anon = requests.post(url + "/recommend", json={"history": app["items"][:2], "k": 3}, timeout=60).json()
    clicked = anon["items"][0]["item_id"]
    assert requests.post(url + "/feedback", json={"request_id": anon["request_id"], "item_id": clicked,
                                                  "event": "click"}, timeout=60).status_code == 200
    same = requests.post(url + "/recommend", json={"history": app["items"][:2], "k": 3,
                                                   "session_id": anon["session_id"]}, timeout=60).json()
    assert same["session_id"] == anon["session_id"] and same["live_history"] == 1
    assert clicked not in [i["item_id"] for i in same["items"]]
    other = requests.post(url + "/recommend", json={"history": app["items"][:2], "k": 3}, timeout=60).json()
    assert other["session_id"] != anon["session_id"] and other["live_history"] == 0
    events = read_feedback(app["args"]["feedback_root"], "events")  # may lag (flush), never over-counts
    pairs = list(zip(events["request_id"].to_pylist(), events["item_id"].to_pylist()))
    assert pairs.count((before["request_id"], bought)) <= 1 and ("never-issued", app["items"][0]) not in pairs


def test_nan_and_infinity_are_refused_with_422(app):
    url = app["url"]
    for path, body in [("/recommend", '{"k": NaN}'), ("/recommend", '{"context": {"x": Infinity}}'),
                       ("/recommend", '{"filters": {"price_max": -Infinity}}'),
                       ("/items", '{"item_id": "inf-item", "attributes": ["a"], "price": Infinity}')]:
        r = requests.post(url + path, data=body, headers={"content-type": "application/json"}, timeout=60)
        assert r.status_code == 422, (path, body, r.status_code, r.text)
        assert r.json()["detail"][0]["loc"], r.text


def test_new_item_added_at_runtime_is_retrieved_and_ranked(app):
    url = app["url"]
    r = requests.post(url + "/items", json=_twin(app, 7, "new-item-1"), timeout=60)
    assert r.status_code == 201, r.text
    assert requests.post(url + "/items", json=_twin(app, 7, "new-item-1"), timeout=60).status_code == 409
    assert requests.get(url + "/readyz", timeout=60).json()["items"] == len(app["items"]) + 1
    # its vector comes from its content: its neighbours are its content twin's neighbours
    mine = requests.get(url + "/items/new-item-1/similar?k=20", timeout=60)
    assert mine.status_code == 200, mine.text
    twin = requests.get(url + f"/items/{app['items'][7]}/similar?k=20", timeout=60).json()
    overlap = {s["item_id"] for s in mine.json()["similar"]} & {s["item_id"] for s in twin["similar"]}
    assert len(overlap) >= 10, overlap  # chance: 20 * 20 / 200 = 2
    # the retriever finds it and the ranker ranks it: a session of items like it brings it up
    same = [app["items"][i] for i, row in enumerate(app["rows"]) if row["attributes"] == app["rows"][7]["attributes"]
            and i != 7][:5]
    rec = requests.post(url + "/recommend", json={"history": same or [app["items"][7]], "k": 100,
                                                  "filters": {"category": app["rows"][7]["category"]}}, timeout=60)
    assert rec.status_code == 200, rec.text
    assert "new-item-1" in [i["item_id"] for i in rec.json()["items"]]
    # every part knows the new id: in a history, in feedback, in filters
    hist = requests.post(url + "/recommend", json={"history": ["new-item-1"], "k": 5,
                                                   "filters": {"exclude": ["new-item-1"]}}, timeout=60)
    assert hist.status_code == 200 and len(hist.json()["items"]) == 5
    fb = requests.post(url + "/feedback", json={"request_id": rec.json()["request_id"], "item_id": "new-item-1",
                                                "event": "click"}, timeout=60)
    assert fb.status_code == 200 and fb.json()["learned"]
    anon = requests.post(url + "/recommend", json={"history": ["new-item-1"], "k": 3}, timeout=60).json()
    assert anon["session_id"] and anon["live_history"] == 0


def _deploy_config(args: dict, model: dict | None = None) -> None:
    """What ``serve deploy`` does with a config file (cluster/serve.yaml's shape): the controller
    builds the app from its import path and args. ``model``: the Retriever's and Ranker's
    ``user_config`` set in the config's ``deployments:`` (a lightweight update, applied in place
    by ``reconfigure``; a change of ``args`` is a new code version instead)."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    app: dict = {"name": "raycart", "route_prefix": "/", "import_path": "serving.deploy.app:build_app", "args": args}
    if model is not None:
        app["deployments"] = [{"name": name, "user_config": model} for name in ("Retriever", "Ranker")]
    _get_global_client().deploy_apps(ServeDeploySchema.model_validate({"applications": [app]}))


def test_model_rollouts_answer_every_request(app):
    """Clients keep asking while a new model rolls out four times, both ways a shop does it:
    ``serve.run`` from Python (a new code version: every deployment gets new replicas) and
    ``serve deploy`` of a config (the first one with the model in its args: a new code version
    too; the next one with the model as the retriever's and ranker's ``user_config``: applied in
    place by the running replicas). Every request is answered 200, the answers switch to each new
    version, and each answer is retrieved and ranked by one model version (the feedback-log test
    checks the versions logged for every answer). Runtime items stay."""
    import shutil

    from ray import serve

    from serving.deploy.app import build_app

    url = app["url"]
    assert requests.post(url + "/items", json=_twin(app, 11, "before-rollout"), timeout=60).status_code == 201
    rollouts = [("serve.run", "v2"), ("serve deploy args", "v3"), ("serve deploy user_config", "v4"),
                ("serve.run", "v5")]
    in_place, deployed = [], dict(app["args"])
    with RecommendStream(url, app["users"][:2], timeout_s=60) as stream:
        stream.wait_until(lambda answers: len(answers) >= 4, timeout_s=60)
        for how, version in rollouts:
            model = str(app["root"] / f"ranker-{version}")
            shutil.copytree(app["args"]["model_dir"], model)
            args = {**app["args"], "model_dir": model, "model_version": version}
            before = _pids("Retriever") + _pids("Ranker")
            if how == "serve.run":
                serve.run(build_app(args), name="raycart", route_prefix="/")
            elif how == "serve deploy args":
                _deploy_config(args)
                deployed = args
            else:  # the same args as deployed: only the model deployments' user_config changes
                _deploy_config(deployed, {"model_dir": model, "model_version": version})
            stream.wait_until(lambda answers, v=version: [a[1] for a in answers[-4:]] == [v] * 4, timeout_s=180)
            assert [a[1] for a in stream.answers[-4:]] == [version] * 4, (how, version, stream.answers[-6:])
            after = _pids("Retriever") + _pids("Ranker")  # (before may still list replicas draining)
            in_place.append(bool(after) and set(after) <= set(before))
    answers = stream.answers
    failed = [a for a in answers if a[0] != 200]
    assert not failed, (len(failed), len(answers), failed[:3])
    assert answers[0][1] == "v1" and len(answers) > 40, (len(answers), answers[:3])
    # the user_config update was applied in place: the same retriever and ranker processes
    assert in_place == [False, False, True, False], in_place
    sim = requests.get(url + "/items/before-rollout/similar?k=5", timeout=60)
    assert sim.status_code == 200 and len(sim.json()["similar"]) == 5  # re-applied with the new model


def test_killed_ingress_replica_loses_no_acknowledged_feedback(app):
    """SIGKILL the ingress replica while feedback streams in: every event it acknowledged is
    published by the replica Serve starts in its place (it finds the dead writer's log), and the
    requests issued before the kill still take feedback (the request registry lives in the user
    state, not in the ingress)."""
    url = app["url"]
    pending: list[tuple[str, str]] = []  # (request id, item) shown and not yet clicked
    acked: list[tuple[str, tuple[str, str]]] = []
    failed, killed = 0, []
    deadline = time.time() + 180
    n = 0
    while time.time() < deadline and (not killed or sum(1 for t, _ in acked if t == "after") < 10):
        tag = "after" if killed else "before"
        try:
            if not pending:
                rec = requests.post(url + "/recommend", json={"user_id": app["users"][4 + n % 20], "k": 10},
                                    timeout=10)
                n += 1
                if rec.status_code == 200:
                    pending = [(rec.json()["request_id"], i["item_id"]) for i in rec.json()["items"]]
                continue
            pair = pending.pop()
            r = requests.post(url + "/feedback", json={"request_id": pair[0], "item_id": pair[1], "event": "view"},
                              timeout=10)
            if r.status_code == 200:
                acked.append((tag, pair))
            else:
                failed += 1
        except requests.RequestException:
            failed += 1
            time.sleep(0.2)
        if not killed and len(acked) >= 30:
            pids = _pids("Ingress")
            assert pids, "no ingress replica process found"
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])
    assert killed and sum(1 for t, _ in acked if t == "after") >= 10, (len(acked), failed)
    before = {p for t, p in acked if t == "before"}
    events = read_feedback(app["args"]["feedback_root"], "events")
    published = set(zip(events["request_id"].to_pylist(), events["item_id"].to_pylist()))
    assert before <= published, sorted(before - published)[:5]
    after = [p for t, p in acked if t == "after"]  # acknowledged by the replica that replaced the killed one
    _wait_published(app["args"]["feedback_root"], set(after))


def test_feedback_log_holds_every_acknowledged_record_after_shutdown(app):
    from ray import serve

    url = app["url"]
    acked = []
    for _ in range(12):
        rec = requests.post(url + "/recommend", json={"user_id": app["users"][3], "k": 2}, timeout=60).json()
        item = rec["items"][0]["item_id"]
        r = requests.post(url + "/feedback", json={"request_id": rec["request_id"], "item_id": item,
                                                   "event": "click"}, timeout=60)
        if r.status_code == 200:
            acked.append((rec["request_id"], item))
    serve.delete("raycart")  # graceful: replicas flush their logs and the policy checkpoints
    events = read_feedback(app["args"]["feedback_root"], "events")
    published = set(zip(events["request_id"].to_pylist(), events["item_id"].to_pylist()))
    assert set(acked) <= published
    impressions = read_feedback(app["args"]["feedback_root"], "impressions")
    assert {r for r, _ in acked} <= set(impressions["request_id"].to_pylist())
    assert impressions["propensity"].to_pylist() and min(impressions["propensity"].to_pylist()) > 0
    # one model version per answer: retrieved and ranked by the same one, rollouts included
    assert impressions["retriever_version"].to_pylist() == impressions["model_version"].to_pylist()
    # the log feeds off-policy evaluation: every impression carries the policy's greedy flag
    from training.evaluation.ope.serving_log import off_policy_value

    assert None not in impressions["greedy"].to_pylist()
    value = off_policy_value(impressions, events, bootstrap=0)
    assert value["requests"] == len(set(impressions["request_id"].to_pylist())) and value["logged"]["value"] > 0
    assert value["greedy"]["ips"] > 0  # exploration is off here: every slot is greedy, propensity 1
    # "what would this model have earned": the served model as a target policy, one command
    out = app["root"] / "ope-model.json"
    proc = subprocess.run([str(Path(sys.executable).with_name("raycart")), "ope", "--feedback",
                           app["args"]["feedback_root"], "--target-policy", app["args"]["model_dir"], "--data",
                           app["args"]["data_dir"], "--out", out, "--bootstrap", "100"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["requests"] == value["requests"] and result["effective_sample_size"] >= 0
    assert result["max_weight"] >= 0 and "ci95" in result["ips"]
