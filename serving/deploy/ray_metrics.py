"""Where the serving path's numbers go in a Serve replica: :class:`RaySink`, the
:class:`~serving.core.metrics.Sink` on Ray Serve's metrics (``ray.serve.metrics``, which add the
``deployment``, ``replica`` and ``application`` tags), exported in Prometheus format on each node's
metrics export port. The metrics themselves are declared Ray-free in :mod:`serving.core.metrics`."""

from __future__ import annotations

import threading

from ray.serve import metrics as serve_metrics

from serving.core.metrics import MetricSpec


class RaySink:
    """:class:`Sink` on Ray Serve's metrics; create it in the replica (the tags come from the
    replica's context). The Ray metric objects are made on first use, one per name."""

    def __init__(self):
        self.kinds = {"counter": serve_metrics.Counter, "gauge": serve_metrics.Gauge,
                      "histogram": serve_metrics.Histogram}
        self.made: dict[str, object] = {}
        self.lock = threading.Lock()  # stages record from worker threads too

    def _metric(self, spec: MetricSpec):
        with self.lock:
            metric = self.made.get(spec.name)
            if metric is None:
                extra = {"boundaries": list(spec.buckets)} if spec.kind == "histogram" else {}
                metric = self.kinds[spec.kind](spec.name, description=spec.description, tag_keys=spec.labels,
                                               **extra)
                self.made[spec.name] = metric
            return metric

    def record(self, spec: MetricSpec, value: float, labels: dict[str, str]) -> None:
        metric = self._metric(spec)
        tags = labels or None
        if spec.kind == "counter":
            metric.inc(value, tags=tags)
        elif spec.kind == "gauge":
            metric.set(value, tags=tags)
        else:
            metric.observe(value, tags=tags)
