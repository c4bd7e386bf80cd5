"""Rate limits at the HTTP edge: token buckets per API key and per shopper, and a cap on the
feedback events one answer may collect.

In-process, per replica: with ``n`` Ingress replicas behind a load balancer a client gets up to
``n`` times the configured rate (a shared limiter -- Redis -- would make it global). Each table of
buckets is bounded (least recently used dropped), so made-up keys or user ids cannot fill memory;
a dropped bucket comes back full, which errs towards serving.

* :class:`TokenBuckets` -- ``rate`` tokens a second up to ``burst``; ``take(name)`` answers 0
  (served) or the seconds until a token is there (429 with ``Retry-After``).
* :class:`~serving.edge.keylimit.KeyLimit` -- ASGI middleware inside the
  :class:`~serving.edge.security.Guard`: one bucket per API key (by its SHA-256) for every route
  that needs a key, when keys are configured (the edge's part, over these buckets).
* per shopper (``u:<user_id>``/``s:<session_id>``) and the per-answer feedback cap
  (:class:`RequestCap`): in :class:`~serving.core.service.RecommendService`, which knows whom a
  ``/feedback`` acts for only once it has looked its request up.

Plain Python, no Ray.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable


class TokenBuckets:
    """Token buckets by name, at most ``max_names`` of them (least recently used dropped).

    Example::

        b = TokenBuckets(rate=1.0, burst=2, max_names=1000)
        b.take("k"), b.take("k"), b.take("k")  # 0.0, 0.0, ~1.0 (seconds to wait)
    """

    def __init__(self, rate: float, burst: int, max_names: int, clock: Callable[[], float] = time.monotonic):
        if rate <= 0 or burst < 1 or max_names < 1:
            raise ValueError("rate must be > 0, burst and max_names >= 1")
        self.rate, self.burst, self.max_names, self.clock = rate, burst, max_names, clock
        self.buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()  # tokens, at
        self.lock = threading.Lock()
        self.refused = 0  # takes answered with a wait, since start (/readyz)

    def take(self, name: str) -> float:
        """Take one token: 0.0 when there was one, else the seconds until there is (nothing taken)."""
        now = self.clock()
        with self.lock:
            tokens, at = self.buckets.pop(name, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate)
            wait = 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate
            self.buckets[name] = (tokens - 1.0 if wait == 0.0 else tokens, now)  # newest last
            while len(self.buckets) > self.max_names:
                self.buckets.popitem(last=False)
            self.refused += wait > 0.0
            return wait

    def describe(self) -> str:
        return f"{self.rate:g} requests/s, burst {self.burst}"


def buckets(rate: float, burst: int, max_names: int) -> TokenBuckets | None:
    """The buckets of one scope, or None where its rate is 0 (off)."""
    return TokenBuckets(rate, burst, max_names) if rate > 0 else None


def retry_after(wait_s: float) -> str:
    """``Retry-After`` in whole seconds, at least 1."""
    return str(max(1, math.ceil(wait_s)))


class RequestCap:
    """At most ``limit`` recorded feedback events per request id, for the last ``max_requests``
    request ids seen (a request forgotten here starts again from 0). ``reserve`` before recording,
    ``release`` when the event was not recorded after all, so concurrent events cannot overshoot."""

    def __init__(self, limit: int, max_requests: int):
        self.limit, self.max_requests = limit, max_requests
        self.counts: collections.OrderedDict[str, int] = collections.OrderedDict()
        self.lock = threading.Lock()
        self.refused = 0  # events refused, since start (/readyz)

    def reserve(self, request_id: str) -> bool:
        with self.lock:
            n = self.counts.pop(request_id, 0)
            self.counts[request_id] = n + (n < self.limit)
            while len(self.counts) > self.max_requests:
                self.counts.popitem(last=False)
            self.refused += n >= self.limit
            return n < self.limit

    def release(self, request_id: str) -> None:
        with self.lock:
            if self.counts.get(request_id, 0) > 0:
                self.counts[request_id] -= 1


def limits_report(per_key: TokenBuckets | None, per_shopper: TokenBuckets | None, cap: RequestCap | None) -> dict:
    """What ``/readyz`` says of this replica's limits: each scope's setting (None = off) and the
    requests it refused since the replica started."""
    return {"per_key": per_key.describe() if per_key else None,
            "per_shopper": per_shopper.describe() if per_shopper else None,
            "feedback_per_request": cap.limit if cap else None,
            "refused": {"key": per_key.refused if per_key else 0, "shopper": per_shopper.refused if per_shopper else 0,
                        "feedback_cap": cap.refused if cap else 0}}
