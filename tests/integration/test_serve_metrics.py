"""The Serve app's Prometheus metrics, scraped from Ray's metrics export port on 127.0.0.1 after
real HTTP requests: request counts and errors by endpoint, latency histograms per endpoint and
step, feedback by type, impressions / clicks / reward by model and policy version, the index
size -- and the ingress's JSON access line in its Serve replica log."""

import glob
import json
import time
from collections import defaultdict

import pytest
import requests
from netwatch import LOOPBACK, listeners
from prometheus_client.parser import text_string_to_metric_families

from serving.core.metrics import SPECS, exported, policy_family
from serving.state.redis_server import free_port

pytestmark = pytest.mark.integration

SENT = 4  # /recommend requests, each followed by a click on its first item
K = 3


@pytest.fixture(scope="module")
def app(tiny_shop, tmp_path_factory):
    from ray import serve

    from serving.deploy.app import build_app

    root = tmp_path_factory.mktemp("metrics")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = {"model_dir": tiny_shop["ranker"], "data_dir": tiny_shop["data"], "feedback_root": str(root / "feedback"),
            "wal_dir": str(root / "wal"), "policy_state": str(root / "policy.npz"),
            "items_root": str(root / "new-items"), "state_dir": str(root / "user-state"), "request_timeout_s": 60.0,
            "trust_loopback": True}  # no keys: this test's client is local
    serve.run(build_app(args), name="raycart", route_prefix="/")
    from training.data.dataset import load_dataset

    ds = load_dataset(tiny_shop["data"])
    yield {"url": f"http://127.0.0.1:{port}", "users": ds.users["external_id"].to_pylist(),
           "num_items": ds.items.num_rows}
    serve.shutdown()


def _scrape(url: str) -> dict[str, list[tuple[dict, float]]]:
    """Our samples (``ray_raycart_*``) by sample name: ``(labels, value)`` per series."""
    out = defaultdict(list)
    for family in text_string_to_metric_families(requests.get(url, timeout=10).text):
        for s in family.samples:
            if s.name.startswith("ray_raycart_"):
                out[s.name].append((s.labels, s.value))
    return out


def _live_replicas() -> set[str]:
    """The replica ids of the Serve replicas alive now (actor names ``SERVE_REPLICA::app#dep#id``):
    Ray keeps exporting a gauge's last value for a while after its replica is gone, so earlier
    tests' apps (other item counts, runtime items, the fused topology) may still show."""
    import ray

    return {a["name"].rsplit("#", 1)[1] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith("SERVE_REPLICA::")}


def _ours(samples: dict, live: set[str]) -> dict:
    """The series of this app's replicas (``live``) only: an earlier test's app's series would
    otherwise meet the counts before ours are exported."""
    return {name: [(lab, v) for lab, v in series if lab.get("replica") in live] for name, series in samples.items()}


def _total(samples: dict, name: str, **labels) -> float:
    """The sum over every series of ``name`` whose labels include ``labels``."""
    return sum(v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items()))


def test_the_app_exports_its_metrics_on_loopback(app, ray_metrics_url, ray_cluster):
    port = ray_metrics_url.split(":")[2].split("/")[0]
    bound = [local for local, _ in listeners() if local.rsplit(":", 1)[1] == port]
    assert bound and all(local.startswith(LOOPBACK) for local in bound), bound  # not 0.0.0.0

    ids = []
    for user in app["users"][:SENT]:
        r = requests.post(app["url"] + "/recommend", json={"user_id": user, "k": K}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        ids.append(body["request_id"])
        f = requests.post(app["url"] + "/feedback", json={"request_id": body["request_id"],
                                                           "item_id": body["items"][0]["item_id"], "event": "click"},
                          timeout=60)
        assert f.status_code == 200 and f.json()["status"] == "recorded", f.text
    assert requests.post(app["url"] + "/recommend", json={"k": 0}, timeout=60).status_code == 422
    versions = {"model_version": body["model_version"], "policy_version": policy_family(body["policy_version"])}
    live = _live_replicas()  # this app's replicas: the earlier tests' apps are shut down

    wanted = {  # Ray exports custom metrics every few seconds: poll, bounded
        "requests": lambda s: _total(s, "ray_raycart_requests_total", endpoint="/recommend", status="2xx") >= SENT,
        "clicks": lambda s: _total(s, "ray_raycart_feedback_events_total", event="click",
                                   outcome="recorded") >= SENT,
        "errors": lambda s: _total(s, "ray_raycart_request_errors_total", endpoint="/recommend", status="4xx") >= 1,
        "stages": lambda s: all(_total(s, "ray_raycart_step_latency_seconds_count", step=x) >= SENT
                                for x in ("retrieval", "ranking", "policy_choose")),
        "index": lambda s: _total(s, "ray_raycart_index_items") > 0,
    }
    deadline = time.monotonic() + 45
    while True:
        everyone = _scrape(ray_metrics_url)
        samples = _ours(everyone, live)
        missing = [k for k, ok in wanted.items() if not ok(samples)]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert not missing, (missing, sorted(samples))

    # only this app's series count, so the counts are exact
    assert _total(samples, "ray_raycart_requests_total", endpoint="/recommend", status="2xx") == SENT
    assert _total(samples, "ray_raycart_requests_total", endpoint="/feedback", status="2xx") == SENT
    latency = _total(samples, "ray_raycart_request_latency_seconds_count", endpoint="/recommend")
    assert latency == SENT + 1  # the 422 too
    assert _total(samples, "ray_raycart_request_latency_seconds_sum", endpoint="/recommend") > 0
    inf = _total(samples, "ray_raycart_request_latency_seconds_bucket", endpoint="/recommend", le="+Inf")
    assert inf == latency
    assert _total(samples, "ray_raycart_impressions_total", **versions) == SENT * K
    assert _total(samples, "ray_raycart_clicks_total", **versions) == SENT
    assert _total(samples, "ray_raycart_reward_total", **versions) == SENT  # a click's reward is 1
    # the steps are measured in the replicas that do the work, tagged by Serve with their deployment
    ranking = [lab for lab, _ in samples["ray_raycart_step_latency_seconds_count"] if lab["step"] == "ranking"]
    assert {lab["deployment"] for lab in ranking} == {"Ranker"}
    index = samples["ray_raycart_index_items"]
    assert {lab["deployment"] for lab, _ in index} == {"Retriever"}
    assert all(v == app["num_items"] for _, v in index)
    runtime = [v for _, v in samples["ray_raycart_runtime_items"]]
    assert all(v == 0 for v in runtime), runtime  # no item added at runtime yet (if exported yet)
    # every declared metric is exported -- but a counter only once it counts something (Ray's
    # counters take no 0), and nothing here is rate limited (the unit tests count refusals)
    on_event = {"raycart_rate_limited_total"}
    assert {name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum") for name in everyone} == {
        exported(n) for n in SPECS if n not in on_event}

    # the ingress's access lines: JSON, one per request, with the request id, in its replica log
    logs = ray_cluster._private.worker._global_node.get_logs_dir_path()
    lines = []
    for path in glob.glob(f"{logs}/serve/replica_raycart_Ingress_*.log"):
        with open(path) as fh:
            lines += [json.loads(line[line.index('{"event":"request"'):]) for line in fh
                      if '{"event":"request"' in line]
    ours = [x for x in lines if x["request_id"] in ids]
    assert len([x for x in ours if x["endpoint"] == "/recommend"]) == SENT
    assert len([x for x in ours if x["endpoint"] == "/feedback" and x["feedback"] == "click"]) == SENT
    assert all(x["status"] == 200 and x["ms"] > 0 for x in ours)
    # ... and not on the console: the workers' stdout/stderr (what log_to_driver prints) lack them
    for path in glob.glob(f"{logs}/worker-*.out") + glob.glob(f"{logs}/worker-*.err"):
        with open(path, errors="replace") as fh:
            text = fh.read()
        assert not any(i in text for i in ids), path
