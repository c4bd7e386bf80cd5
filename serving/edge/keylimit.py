"""The per-API-key rate limit at the HTTP edge: ASGI middleware placed inside the
:class:`~serving.edge.security.Guard`, over the token buckets of :mod:`serving.core.ratelimit`."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from serving.core.metrics import NO_METRICS, Metrics
from serving.core.ratelimit import TokenBuckets, retry_after
from serving.edge.security import GuardSettings, presented_key, required_role, route_path


@dataclass
class KeyLimitSettings:
    """Filled in by :func:`serving.edge.http.configure`; ``buckets`` None: no per-key limit."""

    guard: GuardSettings = field(default_factory=GuardSettings)
    buckets: TokenBuckets | None = None
    metrics: Metrics = NO_METRICS


class KeyLimit:
    """ASGI middleware, placed inside the Guard (so only keys it accepted reach a bucket): 429
    with ``Retry-After`` once a key has used its burst."""

    def __init__(self, app, settings: KeyLimitSettings):
        self.app, self.settings = app, settings

    async def __call__(self, scope, receive, send):
        settings = self.settings
        if scope["type"] != "http" or settings.buckets is None or not settings.guard.keys.configured \
                or required_role(scope.get("method", "GET"), route_path(scope)) is None:
            return await self.app(scope, receive, send)
        key = presented_key(dict(scope.get("headers") or []))
        wait = settings.buckets.take(hashlib.sha256(key.encode()).hexdigest())
        if wait == 0.0:
            return await self.app(scope, receive, send)
        settings.metrics.rate_limited("key")
        body = json.dumps({"detail": f"rate limit of this API key ({settings.buckets.describe()}) reached; "
                                     f"retry after {retry_after(wait)} s"}).encode()
        await send({"type": "http.response.start", "status": 429,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"retry-after", retry_after(wait).encode())]})
        await send({"type": "http.response.body", "body": body})
