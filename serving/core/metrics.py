"""What the serving path measures, as typed calls -- and where those numbers go.

:class:`Metrics` is the interface the Ray-free parts (:class:`~serving.core.service.RecommendService`,
the steps in :mod:`serving.core.retrieve_rank` and :mod:`serving.core.policy`, the HTTP edge) call: ``metrics.request("/recommend", 200,
0.012)``. It hands each number to a :class:`Sink`; without one (``NO_METRICS``, the default
everywhere) nothing is recorded, so the service, its unit tests and the one-process run need no
metrics backend. The Serve app gives each replica a :class:`~serving.deploy.ray_metrics.RaySink`: Ray Serve's metrics
(``ray.serve.metrics``, which add the ``deployment``, ``replica`` and ``application`` tags),
exported in Prometheus format on each node's metrics export port.

Every metric is declared once, in :data:`SPECS` (name, type, labels, buckets); the README's
table and the Grafana dashboard's check (``tests/unit/serving/core/test_serving_metrics.py``) read it. Ray
exports a metric named ``raycart_x`` as ``ray_raycart_x`` (:func:`exported`).

Label values are bounded: endpoints are route templates (:func:`endpoint_of`), statuses classes
(``2xx``), and the policy version drops its update counter (:func:`policy_family`), which
changes with every update and would make a new time series per request.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Literal, Protocol

from training.models.bandit import REWARDS

ACCESS_LOGGER = "raycart.access"  # one JSON line per request (see access_line)
RAY_PREFIX = "ray_"  # what Ray's Prometheus exporter puts before every application metric

# seconds; from sub-millisecond policy choices to requests held near the 10 s deadline
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STEPS = ("retrieval", "ranking", "policy_choose")  # the timed steps of a request
ENDPOINTS = ("/recommend", "/feedback", "/items", "/items/{item_id}/similar", "/healthz", "/readyz", "other")
EVENTS = tuple(REWARDS)  # view, click, cart, purchase
OUTCOMES = ("recorded", "duplicate")
LIMIT_SCOPES = ("key", "user", "feedback_cap")  # what refused a request (serving.core.ratelimit)


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: Literal["counter", "gauge", "histogram"]
    description: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()


SPECS: dict[str, MetricSpec] = {s.name: s for s in (
    MetricSpec("raycart_request_latency_seconds", "histogram",
               "End-to-end time of an HTTP request in the ingress, by endpoint.", ("endpoint",), LATENCY_BUCKETS),
    MetricSpec("raycart_requests_total", "counter", "HTTP requests answered, by endpoint and status class.",
               ("endpoint", "status")),
    MetricSpec("raycart_request_errors_total", "counter",
               "HTTP requests answered with a 4xx or 5xx, by endpoint and status class.", ("endpoint", "status")),
    MetricSpec("raycart_step_latency_seconds", "histogram",
               "Time spent in one step of a recommendation (retrieval, ranking: per request, the time of the "
               "batch it was ranked in, policy_choose).", ("step",), LATENCY_BUCKETS),
    MetricSpec("raycart_feedback_events_total", "counter",
               "Feedback events accepted, by event type and outcome (recorded, duplicate).", ("event", "outcome")),
    MetricSpec("raycart_impressions_total", "counter", "Items shown, by model and policy version.",
               ("model_version", "policy_version")),
    MetricSpec("raycart_clicks_total", "counter",
               "Click events recorded for shown items, by the version that showed them (CTR = clicks / impressions).",
               ("model_version", "policy_version")),
    MetricSpec("raycart_reward_total", "counter",
               "Sum of the policy's rewards of recorded events (view 0, click 1, cart 2, purchase 5), by the "
               "version that showed the item.", ("model_version", "policy_version")),
    MetricSpec("raycart_rate_limited_total", "counter",
               "Requests refused by a rate limit (per API key, per shopper: 429) or the feedback cap per answer "
               "(400), by scope.", ("scope",)),
    MetricSpec("raycart_index_items", "gauge", "Items in this replica's vector index.", ()),
    MetricSpec("raycart_runtime_items", "gauge", "Items added at runtime that this ingress replica knows.", ()),
    MetricSpec("raycart_feedback_quarantined_segments", "gauge",
               "Feedback-log segments set aside in this replica's WAL folder, not published (raycart republish).",
               ()),
)}


def exported(name: str) -> str:
    """The name Prometheus sees for one of :data:`SPECS` (Ray prefixes application metrics)."""
    return RAY_PREFIX + name


def status_class(status: int) -> str:
    return f"{status // 100}xx"


def endpoint_of(method: str, path: str) -> str:
    """The route template of a request path (one of :data:`ENDPOINTS`): a bounded label, whatever
    ids or junk the path carries."""
    path = "/" + path.strip("/")
    if path in ("/recommend", "/feedback", "/items", "/healthz", "/readyz"):
        return path
    if re.fullmatch(r"/items/[^/]+/similar", path):
        return "/items/{item_id}/similar"
    return "other"


def policy_family(version: str) -> str:
    """``linucb-eps0.05-u1234`` -> ``linucb-eps0.05``: the policy's configuration without the count
    of updates it has learned from (a new value per update: not a label)."""
    return re.sub(r"-u\d+$", "", version)


class Sink(Protocol):
    def record(self, spec: MetricSpec, value: float, labels: dict[str, str]) -> None:
        """Counter: add ``value``; gauge: set it; histogram: observe it."""


class Metrics:
    """The typed calls of the serving path; a no-op without a sink.

    Example::

        metrics = Metrics(RaySink())            # in a Serve replica (serving.deploy.ray_metrics)
        metrics.step("ranking", 0.004)
        NO_METRICS.step("ranking", 0.004)      # records nothing
    """

    def __init__(self, sink: Sink | None = None):
        self.sink = sink

    def _put(self, name: str, value: float, **labels: str) -> None:
        if self.sink is not None:
            self.sink.record(SPECS[name], float(value), labels)

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        cls = status_class(status)
        self._put("raycart_request_latency_seconds", seconds, endpoint=endpoint)
        self._put("raycart_requests_total", 1, endpoint=endpoint, status=cls)
        if status >= 400:
            self._put("raycart_request_errors_total", 1, endpoint=endpoint, status=cls)

    def step(self, step: str, seconds: float, count: int = 1) -> None:
        """``count`` requests each spent ``seconds`` in ``step`` (a batch of them, for ranking)."""
        for _ in range(count):
            self._put("raycart_step_latency_seconds", seconds, step=step)

    def impressions(self, count: int, model_version: str, policy_version: str) -> None:
        if count > 0:
            self._put("raycart_impressions_total", count, model_version=model_version,
                      policy_version=policy_family(policy_version))

    def feedback(self, event: str, outcome: str, model_version: str, policy_version: str) -> None:
        """One accepted event; a recorded one also counts towards clicks and reward of the versions
        that showed the item (``unknown`` where this replica did not answer the request)."""
        self._put("raycart_feedback_events_total", 1, event=event, outcome=outcome)
        if outcome != "recorded":
            return
        versions = {"model_version": model_version, "policy_version": policy_family(policy_version)}
        if event == "click":
            self._put("raycart_clicks_total", 1, **versions)
        if REWARDS.get(event, 0.0) > 0:  # a counter only grows: a view adds nothing
            self._put("raycart_reward_total", REWARDS[event], **versions)

    def rate_limited(self, scope: str) -> None:
        """One request refused by the limit of ``scope`` (one of :data:`LIMIT_SCOPES`)."""
        self._put("raycart_rate_limited_total", 1, scope=scope)

    def index_items(self, count: int) -> None:
        self._put("raycart_index_items", count)

    def runtime_items(self, count: int) -> None:
        self._put("raycart_runtime_items", count)

    def quarantined_segments(self, count: int) -> None:
        self._put("raycart_feedback_quarantined_segments", count)


NO_METRICS = Metrics()


def access_line(request_id: str, method: str, endpoint: str, status: int, seconds: float, **extra) -> str:
    """The ingress's one log line per request, as JSON (``extra``: what the route added, e.g. the
    versions that answered)."""
    return json.dumps({"event": "request", "request_id": request_id, "method": method, "endpoint": endpoint,
                       "status": status, "ms": round(seconds * 1000, 2), **extra}, separators=(",", ":"))


def route_access_log(target: logging.Logger) -> None:
    """Send the access lines (:data:`ACCESS_LOGGER`) to ``target``'s handlers only -- in a Serve
    replica, ``ray.serve``: the replica's log file; the lines carry ``log_to_stderr=False``, so
    they stay off the console."""

    class Forward(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            target.handle(record)

    access = logging.getLogger(ACCESS_LOGGER)
    access.handlers = [Forward()]
    access.setLevel(logging.INFO)
    access.propagate = False
