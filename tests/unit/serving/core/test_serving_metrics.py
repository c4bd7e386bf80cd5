"""``serving.core.metrics`` without Ray: the typed calls and their labels, the service and the HTTP edge
recording through them (a recording sink in place of Ray's), the JSON access line, and the Grafana
dashboard's PromQL naming only metrics the app defines."""

import asyncio
import json
import logging
import re
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from starlette.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_service import App

from serving.core.metrics import (
    ACCESS_LOGGER,
    ENDPOINTS,
    SPECS,
    STEPS,
    Metrics,
    MetricSpec,
    endpoint_of,
    exported,
    policy_family,
)

DASHBOARD = Path(__file__).resolve().parents[4] / "cluster" / "grafana-dashboard.json"


class Recorded:
    """A :class:`~serving.core.metrics.Sink` that keeps what a Prometheus backend would: counter sums,
    gauge values, histogram observations, per (name, labels)."""

    def __init__(self):
        self.values: dict[tuple, float] = defaultdict(float)
        self.observed: dict[tuple, list[float]] = defaultdict(list)

    def record(self, spec: MetricSpec, value: float, labels: dict[str, str]) -> None:
        assert set(labels) == set(spec.labels), (spec.name, labels)  # Ray refuses other tag keys
        assert all(isinstance(v, str) for v in labels.values())
        key = (spec.name, tuple(sorted(labels.items())))
        if spec.kind == "counter":
            assert value > 0, (spec.name, value)  # Ray's counters refuse anything else
            self.values[key] += value
        elif spec.kind == "gauge":
            self.values[key] = value
        else:
            self.observed[key].append(value)

    def get(self, name: str, **labels) -> float:
        return self.values.get((name, tuple(sorted(labels.items()))), 0.0)

    def seen(self, name: str, **labels) -> list[float]:
        return self.observed.get((name, tuple(sorted(labels.items()))), [])


def test_requests_errors_and_feedback_by_bounded_labels():
    sink = Recorded()
    m = Metrics(sink)
    m.request("/recommend", 200, 0.02)
    m.request("/recommend", 422, 0.001)
    m.request("/feedback", 503, 0.5)
    assert sink.get("raycart_requests_total", endpoint="/recommend", status="2xx") == 1
    assert sink.get("raycart_requests_total", endpoint="/recommend", status="4xx") == 1
    assert sink.get("raycart_request_errors_total", endpoint="/recommend", status="4xx") == 1
    assert sink.get("raycart_request_errors_total", endpoint="/recommend", status="2xx") == 0
    assert sink.get("raycart_request_errors_total", endpoint="/feedback", status="5xx") == 1
    assert sink.seen("raycart_request_latency_seconds", endpoint="/recommend") == [0.02, 0.001]
    m.impressions(5, "v1", "linucb-eps0.05-u16")
    m.impressions(5, "v1", "linucb-eps0.05-u21")  # the update counter is no label: one series
    m.feedback("click", "recorded", "v1", "linucb-eps0.05-u17")
    m.feedback("purchase", "recorded", "v1", "linucb-eps0.05-u17")
    m.feedback("view", "recorded", "v1", "linucb-eps0.05-u17")
    m.feedback("click", "duplicate", "v1", "linucb-eps0.05-u17")
    v = {"model_version": "v1", "policy_version": "linucb-eps0.05"}
    assert sink.get("raycart_impressions_total", **v) == 10
    assert sink.get("raycart_clicks_total", **v) == 1  # the duplicate click does not count
    assert sink.get("raycart_reward_total", **v) == 6.0  # click 1 + purchase 5 + view 0
    assert sink.get("raycart_feedback_events_total", event="click", outcome="duplicate") == 1
    assert sink.get("raycart_feedback_events_total", event="view", outcome="recorded") == 1
    m.step("ranking", 0.003, count=4)  # a batch of 4 requests
    assert sink.seen("raycart_step_latency_seconds", step="ranking") == [0.003] * 4


def test_label_helpers():
    assert endpoint_of("GET", "/items/sku%2F1/similar") == "/items/{item_id}/similar"
    assert endpoint_of("POST", "/recommend/") == "/recommend"
    assert endpoint_of("GET", "/etc/passwd") == "other" and endpoint_of("GET", "/") == "other"
    assert {endpoint_of("GET", p) for p in ("/recommend", "/feedback", "/items", "/items/x/similar", "/healthz",
                                             "/readyz", "/x")} == set(ENDPOINTS)
    assert policy_family("linucb-eps0.05-u1234") == "linucb-eps0.05"
    assert policy_family("linucb-eps0.1-frozen-u0") == "linucb-eps0.1-frozen"
    assert exported("raycart_requests_total") == "ray_raycart_requests_total"
    assert all(re.fullmatch(r"raycart_[a-z_]+", n) for n in SPECS)


def test_no_sink_records_nothing_and_raises_nothing():
    m = Metrics()
    m.request("/recommend", 200, 0.1)
    m.feedback("purchase", "recorded", "v", "p")
    m.index_items(3)
    assert m.sink is None


@pytest.fixture
def measured(tmp_path):
    sink = Recorded()
    app = App(tmp_path, policy_epsilon=0.0, policy_alpha=0.0, policy_diversity=0.0, explore_candidates=0,
              stale_alpha=0.0)
    app.service.metrics = Metrics(sink)  # the service's own counts
    for part in (app.backend.holder, app.backend.policy):  # the steps' latencies
        part.metrics = app.service.metrics
    return app, sink


def test_the_service_counts_impressions_feedback_and_steps_by_version(measured):
    app, sink = measured
    body = app.recommend(user_id="u1", k=4)
    v = {"model_version": body["model_version"], "policy_version": policy_family(body["policy_version"])}
    assert v == {"model_version": "t1", "policy_version": "linucb-eps0.0"}
    assert sink.get("raycart_impressions_total", **v) == 4
    for step in STEPS:
        assert len(sink.seen("raycart_step_latency_seconds", step=step)) == 1, step
    shown = [o["item_id"] for o in body["items"]]
    app.feedback(request_id=body["request_id"], item_id=shown[0], event="click")
    app.feedback(request_id=body["request_id"], item_id=shown[0], event="click")  # duplicate
    app.feedback(request_id=body["request_id"], item_id=shown[1], event="cart")
    assert sink.get("raycart_clicks_total", **v) == 1
    assert sink.get("raycart_reward_total", **v) == 3.0
    assert sink.get("raycart_feedback_events_total", event="click", outcome="recorded") == 1
    assert sink.get("raycart_feedback_events_total", event="click", outcome="duplicate") == 1
    app.service.versions.clear()  # an answer this replica did not give (or long forgotten)
    app.feedback(request_id=body["request_id"], item_id=shown[2], event="purchase")
    assert sink.get("raycart_reward_total", model_version="unknown", policy_version="unknown") == 5.0
    asyncio.run(app.service.sync(force=True))
    assert sink.get("raycart_runtime_items") == 0


def test_the_edge_measures_every_request_and_logs_one_json_line_each(measured, caplog):
    from serving.edge.http import EdgeLog, Runtime, configure

    app, sink = measured
    edge = EdgeLog(app.log)
    api = configure(Runtime(app.service, edge), app.args.model_copy(update={"trust_loopback": True}))  # no keys
    try:
        with TestClient(api, base_url="http://127.0.0.1", client=("127.0.0.1", 5000)) as client, caplog.at_level(logging.INFO, ACCESS_LOGGER):
            ok = client.post("/recommend", json={"user_id": "u2", "k": 3})
            assert ok.status_code == 200
            bad = client.post("/recommend", json={"k": 0})
            assert bad.status_code == 422
            gone = client.post("/feedback", json={"request_id": "never-issued", "item_id": "i1", "event": "click"})
            assert gone.status_code == 404
            assert client.get("/no/such/route", headers={"x-request-id": "trace-42"}).status_code == 404
            assert client.get("/healthz").status_code == 200
        outsider = TestClient(api, client=("203.0.113.9", 5000))  # refused by the Guard, counted all the same
        assert outsider.post("/recommend", json={"user_id": "u2"}).status_code == 401
    finally:
        edge.stop.set()
    assert sink.get("raycart_requests_total", endpoint="/recommend", status="2xx") == 1
    assert sink.get("raycart_request_errors_total", endpoint="/recommend", status="4xx") == 2
    assert sink.get("raycart_request_errors_total", endpoint="/feedback", status="4xx") == 1
    assert sink.get("raycart_request_errors_total", endpoint="other", status="4xx") == 1
    assert sink.get("raycart_requests_total", endpoint="/healthz", status="2xx") == 1
    assert len(sink.seen("raycart_request_latency_seconds", endpoint="/recommend")) == 3
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == ACCESS_LOGGER]
    assert len(lines) == 5  # the outsider's line came after caplog's block
    first = lines[0]
    assert first["request_id"] == ok.json()["request_id"] and first["status"] == 200
    assert first["endpoint"] == "/recommend" and first["items"] == 3 and first["model_version"] == "t1"
    assert lines[2]["request_id"] == "never-issued" and lines[2]["feedback"] == "click" and lines[2]["status"] == 404
    assert lines[3]["request_id"] == "trace-42" and lines[3]["endpoint"] == "other"
    assert re.fullmatch(r"[0-9a-f]{32}", lines[1]["request_id"])  # none given: a fresh one
    assert all(r.log_to_stderr is False for r in caplog.records if r.name == ACCESS_LOGGER)


def test_the_edge_reports_quarantined_segments_as_a_gauge(measured):
    from serving.edge.http import EdgeLog, Runtime, configure

    app, sink = measured
    edge = EdgeLog(app.log)
    configure(Runtime(app.service, edge), app.args)
    try:
        edge.tick()
        assert ("raycart_feedback_quarantined_segments", ()) in sink.values
        assert sink.get("raycart_feedback_quarantined_segments") == 0
        aside = Path(app.log.config.wal_dir) / ".quarantine"
        aside.mkdir()
        (aside / "test-00000000000000000001-0a1b2c3d.jsonl").write_text("{}\n")
        edge.tick()
        assert sink.get("raycart_feedback_quarantined_segments") == 1
    finally:
        edge.close()


# -- the Grafana dashboard -------------------------------------------------------------------------

PROMQL_WORDS = {"sum", "max", "min", "avg", "count", "rate", "irate", "increase", "histogram_quantile", "by",
                "without", "on", "ignoring", "and", "or", "unless", "clamp_min", "topk"}
GRAFANA_VARIABLES = re.compile(r"\$__rate_interval|\$__interval|\$__range")


def _exported_names() -> dict[str, MetricSpec]:
    names = {}
    for spec in SPECS.values():
        base = exported(spec.name)
        for suffix in ("_bucket", "_count", "_sum") if spec.kind == "histogram" else ("",):
            names[base + suffix] = spec
    return names


def _metrics_of(expr: str) -> set[str]:
    """The metric names an expression reads, having checked that every other word is PromQL and
    every label it matches or groups by is one the metric (or Ray/Serve) sets."""
    known = _exported_names()
    labels = {label for s in SPECS.values() for label in s.labels} | {"le", "deployment", "replica", "application"}
    text = GRAFANA_VARIABLES.sub("5m", expr)
    for matcher in re.findall(r"\{([^}]*)\}", text):
        for name in re.findall(r"([a-z_]+)\s*=~?", matcher):
            assert name in labels, (expr, name)
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", text):
        for name in re.split(r"\s*,\s*", group.strip()):
            assert name in labels, (expr, name)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\b(?:by|without)\s*\([^)]*\)|\"[^\"]*\"", " ", text)
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", text))
    unknown = words - PROMQL_WORDS - set(known)
    assert not unknown, (expr, unknown)
    return words & set(known)


def test_the_dashboard_reads_only_metrics_the_app_defines():
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10
    used = set()
    for expr in exprs:
        names = _metrics_of(expr)
        assert names, expr  # every query reads at least one of our metrics
        used |= {_exported_names()[n].name for n in names}
    assert used == set(SPECS)  # and every metric has a panel
    quantiles = [e for e in exprs if e.startswith("histogram_quantile")]
    assert {re.match(r"histogram_quantile\((0\.\d+)", e).group(1) for e in quantiles} == {"0.5", "0.99"}
    assert all("_bucket" in e and "le" in e for e in quantiles)


def test_the_dashboard_check_catches_a_misspelt_metric_or_label():
    with pytest.raises(AssertionError):
        _metrics_of("sum(rate(ray_raycart_request_total[5m]))")  # requests_total
    with pytest.raises(AssertionError):
        _metrics_of("sum by (route) (rate(ray_raycart_requests_total[5m]))")
    assert _metrics_of('sum(rate(ray_raycart_feedback_events_total{event="click"}[$__rate_interval]))') == {
        "ray_raycart_feedback_events_total"}


def test_the_readme_lists_every_metric():
    readme = (DASHBOARD.parents[1] / "README.md").read_text()
    section = readme[readme.index("### Metrics and logs"):]
    for spec in SPECS.values():
        row = re.search(rf"^\| `{exported(spec.name)}` \| (\w+) \| ([^|]*) \|", section, re.MULTILINE)
        assert row, spec.name
        assert row.group(1) == spec.kind and set(re.findall(r"`(\w+)`", row.group(2))) == set(spec.labels)
