"""The HTTP edge: one FastAPI app over a :class:`~serving.core.service.RecommendService`.

Endpoints: ``POST /recommend``, ``POST /feedback``, ``POST /items`` (a new item, recommendable at
once), ``GET /items/{id}/similar``, ``GET /healthz`` (live), ``GET /readyz`` (models loaded, the
feedback log persisting). Every impression and feedback event is appended to the durable feedback
log (:class:`EdgeLog`) **before** the response acknowledges it -- as *pending* records: only when
the response going out is a 2xx (past the Guard, so not its 504) does :class:`Acknowledged` log
their ack, and readers count only acknowledged records (:mod:`training.data.feedback`).

The same ``api`` object is served by the Serve ``Ingress`` (:mod:`serving.deploy.app`) and by one plain
uvicorn process (``benchmarks/plain_fastapi.py``); each process hands it its :class:`Runtime` (the
service and its log) and its settings once, through :func:`configure`. Plain FastAPI, no Ray.

Every request, whatever answers it (a route, the :class:`~serving.edge.security.Guard`'s 401/413/504,
an unhandled error's 500), is measured by :class:`Measured` -- latency, count and errors by
endpoint into the service's :class:`~serving.core.metrics.Metrics` -- and logged as one JSON line on
the ``raycart.access`` logger with its request id (the recommendation's id for ``/recommend`` and
``/feedback``, else the client's ``X-Request-Id`` or a new one).

With ``shopper_token_secret_file`` set, ``/recommend`` and ``/feedback`` act only for the shopper
an ``X-Shopper-Token`` names (:mod:`serving.edge.identity`); rate limits per API key, per shopper and
per answer are :mod:`serving.core.ratelimit`'s (429 with ``Retry-After``).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from serving.core.answers import (
    FeedbackAnswer,
    Health,
    ItemAdded,
    Readiness,
    RecommendAnswer,
    SimilarAnswer,
)
from serving.core.metrics import ACCESS_LOGGER, NO_METRICS, Metrics, access_line, endpoint_of
from serving.core.ratelimit import limits_report
from serving.core.schemas import FeedbackRequest, NewItem, RecommendRequest
from serving.core.service import RecommendService, ServiceError
from serving.edge.identity import TOKEN_HEADER, IdentityRefused, ShopperGate
from serving.edge.keylimit import KeyLimit, KeyLimitSettings
from serving.edge.security import Guard, GuardSettings, route_path
from serving.edge.shop import router as shop_page
from serving.feedback.log import FeedbackLog, FeedbackLogConfig
from serving.feedback.shared import SharedFeedbackLog, SharedLogConfig

LOG_TICK_S = 0.5  # the feedback log's background publisher wakes this often
UNHEALTHY_AFTER_S = 30.0  # WAL appends failing this long: the process reports unhealthy

log = logging.getLogger(__name__)
access_log = logging.getLogger(ACCESS_LOGGER)
NOTE = "raycart.note"  # the scope entry where a route leaves what the access line should say
CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")  # an X-Request-Id taken into the log as it is
# the ack ids of the records this request appended, acknowledged when its 2xx goes out
PENDING: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("raycart_pending_acks", default=None)
api = FastAPI(title="Raycart", description="Retrieve-then-rank recommendations with a learning policy.")
# keys, body cap and deadline: filled in once per process from its AppArgs
GUARD = GuardSettings()
LIMITS = KeyLimitSettings(GUARD)  # per API key; added first: inside the Guard, which checks the key
SHOPPERS = ShopperGate()  # signed shopper tokens (off until configured)
api.add_middleware(KeyLimit, settings=LIMITS)
api.add_middleware(Guard, settings=GUARD)
# the shop page lists shoppers and reads their histories only where anyone may act for anyone
api.state.shoppers_private = lambda: GUARD.current_keys().configured or SHOPPERS.on


class Measured:
    """ASGI middleware outside the :class:`~serving.edge.security.Guard` (so its refusals count too):
    the request's latency and status class by endpoint to the metrics, one JSON access line."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500  # what the server answers if the app raises before it responds
        note: dict = {}
        scope[NOTE] = note

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            seconds = time.perf_counter() - started
            method = scope.get("method", "")
            endpoint = endpoint_of(method, route_path(scope))
            runtime = getattr(api.state, "runtime", None)
            (runtime.service.metrics if runtime is not None else NO_METRICS).request(endpoint, status, seconds)
            if access_log.isEnabledFor(logging.INFO):
                request_id = note.pop("request_id", None) or _client_id(scope) or uuid.uuid4().hex
                access_log.log(logging.WARNING if status >= 500 else logging.INFO,
                               access_line(request_id, method, endpoint, status, seconds, **note),
                               extra={"log_to_stderr": False})  # Serve: the replica's log file only


def _client_id(scope) -> str | None:
    for name, value in scope.get("headers") or ():
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if CLIENT_ID.fullmatch(text) else None
    return None


def _note(request: Request, **fields) -> None:
    """Tell the access line of this request more (its request id, the versions that answered)."""
    request.scope.setdefault(NOTE, {}).update(fields)


class Acknowledged:
    """ASGI middleware outside the :class:`~serving.edge.security.Guard`: collects the ack ids of the
    records a request appends (:data:`PENDING`) and hands them to the :class:`EdgeLog` as the
    response starts -- only when it is a 2xx. A 503 after the append, the Guard's 504 or a
    request cut off (no response at all) leaves its records unacknowledged: readers skip them."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        pending: list[str] = []
        token = PENDING.set(pending)

        async def send_acked(message):
            if message["type"] == "http.response.start" and pending:
                ids = pending[:]
                pending.clear()
                runtime = getattr(api.state, "runtime", None)
                if 200 <= message["status"] < 300 and runtime is not None:
                    await runtime.edge.acknowledged(ids)  # local WAL: on disk before the 2xx goes out
            await send(message)

        try:
            await self.app(scope, receive, send_acked)
        finally:
            PENDING.reset(token)


api.add_middleware(Acknowledged)  # outside the Guard: sees its 504s
api.add_middleware(Measured)  # added last: the outermost
api.include_router(shop_page)  # GET /shop: the shop page page and its helpers (serving.edge.shop)


def open_feedback_log(args, writer: str) -> FeedbackLog | SharedFeedbackLog:
    """The process's feedback log as ``args.feedback_ack`` asks (:class:`serving.core.schemas.AppArgs`)."""
    if args.feedback_ack == "shared":
        return SharedFeedbackLog(SharedLogConfig(root=args.feedback_root, retry_max_s=args.wal_retry_max_s), writer)
    return FeedbackLog(FeedbackLogConfig(root=args.feedback_root, wal_dir=args.wal_dir, background=True,
                                         retry_max_s=args.wal_retry_max_s), writer)


class EdgeLog:
    """The process's feedback log in background mode: appends reach their WAL (local fsync or
    shared storage) off the event loop (a failure is a 503 that acknowledges nothing); inside an
    HTTP request they are pending until :class:`Acknowledged` acknowledges them, which a thread
    of their own logs (local: fsynced, or carried by the next append; shared: in the next group
    commit); another thread seals and publishes, and reports quarantined segments to ``metrics``."""

    def __init__(self, feedback_log: FeedbackLog | SharedFeedbackLog, metrics: Metrics = NO_METRICS):
        self.log, self.metrics = feedback_log, metrics
        self.failing_since: float | None = None  # the WAL itself cannot be written
        self.acks: list[str] = []
        self.ack_ready = threading.Condition()
        self.stop = threading.Event()
        self.quarantined: int | None = None  # last reported to the metrics
        self.acker = threading.Thread(target=self._ack_loop, name="feedback-ack", daemon=True)
        self.acker.start()
        self.publisher = threading.Thread(target=self._publish_loop, name="feedback-log", daemon=True)
        self.publisher.start()

    def _publish_loop(self) -> None:
        while not self.stop.wait(LOG_TICK_S):
            self.tick()

    def tick(self) -> None:
        """One round of the publisher: seal and publish what is due, report quarantined segments."""
        try:
            self.log.tick()
        except Exception as exc:  # noqa: BLE001 -- the log keeps the segment and retries
            log.warning("feedback log tick failed: %s", exc)
        try:
            count = self.log.health()["quarantined_segments"]
        except OSError as exc:
            log.warning("feedback log: cannot count quarantined segments: %s", exc)
            return
        if count != self.quarantined:
            self.metrics.quarantined_segments(count)
            self.quarantined = count

    def report_to(self, metrics: Metrics) -> None:
        self.metrics, self.quarantined = metrics, None  # reported afresh at the next tick

    async def acknowledged(self, ack_ids: list[str]) -> None:
        """Log the acks of a 2xx about to go out. The local WAL writes them (fsynced) before it
        returns, so a crash after the client's 200 cannot leave its records uncounted; a failure
        there, and the shared WAL (its next group commit: a replica lost within that commit's
        time loses the count of those records, not the records), go through the ack thread."""
        if isinstance(self.log, FeedbackLog):
            try:
                await asyncio.to_thread(self.log.ack, ack_ids)
                return
            except Exception as exc:  # noqa: BLE001 -- queued and retried by the ack thread
                log.warning("feedback log: %d ack(s) not written at once (%s); retrying", len(ack_ids), exc)
        self.acknowledge(ack_ids)

    def acknowledge(self, ack_ids: list[str]) -> None:
        """Queue acks for the ack thread; never blocks (called as a response starts)."""
        with self.ack_ready:
            self.acks.extend(ack_ids)
            self.ack_ready.notify()

    def _ack_loop(self) -> None:
        while True:
            with self.ack_ready:
                while not self.acks and not self.stop.is_set():
                    self.ack_ready.wait()
                if not self.acks:
                    return  # stopping, nothing left
                batch, self.acks = self.acks, []
            try:
                self.log.ack(batch)
            except Exception as exc:  # noqa: BLE001 -- kept and retried; until written, not counted
                log.warning("feedback log: %d ack(s) not written (%s); retrying", len(batch), exc)
                with self.ack_ready:
                    self.acks[:0] = batch
                    if self.stop.is_set():
                        log.warning("feedback log: stopping with %d ack(s) unwritten: their records will "
                                    "not count", len(self.acks))
                        return
                    self.ack_ready.wait(LOG_TICK_S)

    async def append(self, table: str, records: list[dict]) -> None:
        pending = PENDING.get()
        ack_id = None
        if pending is not None:  # in an HTTP request: counted once its 2xx goes out
            ack_id = uuid.uuid4().hex
            pending.append(ack_id)
        try:
            await asyncio.to_thread(self.log.append_many, table, records, ack_id)
        except OSError as exc:
            self.failing_since = self.failing_since or time.monotonic()
            raise ServiceError(503, f"could not be recorded durably ({type(exc).__name__}); nothing was "
                                    "acknowledged, retry later") from None
        self.failing_since = None

    def unhealthy(self) -> str | None:
        since = self.failing_since
        if since is not None and time.monotonic() - since > UNHEALTHY_AFTER_S:
            return f"the feedback WAL has not been writable for {time.monotonic() - since:.0f} s"
        return None

    def close(self) -> None:
        with self.ack_ready:
            self.stop.set()
            self.ack_ready.notify()
        self.acker.join(timeout=30)  # the acks queued so far are written before the log closes
        self.publisher.join(timeout=30)  # no publish runs while close() publishes and unlocks
        self.log.close()


@dataclass
class Runtime:
    service: RecommendService
    edge: EdgeLog


def configure(runtime: Runtime, args) -> FastAPI:
    """``api`` serving ``runtime``, with the edge settings of ``args`` (:class:`~serving.core.schemas.AppArgs`);
    a :class:`~serving.edge.security.KeyFileError` for a bad or empty key file."""
    from serving.core.ratelimit import buckets
    from serving.edge.identity import ShopperTokens

    GUARD.use_keys_file(args.api_keys_file, args.keys_reload_s)
    GUARD.max_body_bytes, GUARD.timeout_s = args.max_body_bytes, args.request_timeout_s
    GUARD.trust_loopback = args.trust_loopback
    LIMITS.buckets = buckets(args.rate_limit_key_per_s, args.rate_limit_key_burst, args.rate_limit_max_buckets)
    LIMITS.metrics = runtime.service.metrics
    SHOPPERS.tokens = ShopperTokens.load(args.shopper_token_secret_file) if args.shopper_token_secret_file else None
    SHOPPERS.session_ttl_s = args.session_token_ttl_s
    runtime.edge.report_to(runtime.service.metrics)  # the quarantine gauge, beside the service's numbers
    api.state.runtime = runtime
    return api


def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime  # set by configure() before the app serves


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with where and what, without echoing the input (NaN/Infinity are not JSON: echoing
    them turned a bad request into a 500)."""
    detail = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))[:300], "type": e.get("type")}
              for e in exc.errors()[:20]]
    return JSONResponse(status_code=422, content={"detail": detail})


@api.exception_handler(ServiceError)
async def _refused(request: Request, exc: ServiceError) -> JSONResponse:
    return JSONResponse(status_code=exc.status, content={"detail": exc.detail}, headers=exc.headers)


@api.exception_handler(IdentityRefused)
async def _not_this_shopper(request: Request, exc: IdentityRefused) -> JSONResponse:
    return JSONResponse(status_code=exc.status, content={"detail": exc.detail},
                        headers={"WWW-Authenticate": 'ShopperToken realm="raycart"'} if exc.status == 401 else None)


@api.get("/healthz", response_model=Health)
def healthz() -> dict:
    return {"status": "ok"}


@api.get("/readyz", response_model=Readiness, response_model_exclude_unset=True,
         responses={503: {"model": Readiness, "description": "this process cannot persist feedback"}})
async def readyz(request: Request) -> JSONResponse:
    """503 while this process cannot persist (its WAL cannot be written, or sealed segments cannot
    be published: they are kept and retried); ``degraded`` while the user state is down.
    ``quarantined_segments``: segments set aside, not published, until ``raycart republish``."""
    rt = _runtime(request)
    version, state_ok = await rt.service.readiness()
    wal = rt.edge.log.health()
    persisting = wal["ok"] and rt.edge.failing_since is None
    # a state backend that is down degrades answers (stored history only), it does not stop them
    status = "not ready" if not persisting else "ready" if state_ok else "degraded"
    body: dict[str, Any]
    body = {"status": status, "items": rt.service.catalog.num_items, "model_version": version,
            "user_state": "ok" if state_ok else "unavailable",
            "feedback_log": {"ok": persisting, "unpublished_segments": wal["unpublished_segments"],
                             "corrupt_lines": wal["corrupt_lines"],
                             "quarantined_segments": wal["quarantined_segments"]},
            "rate_limits": limits_report(LIMITS.buckets if GUARD.current_keys().configured else None, rt.service.per_user,
                                         rt.service.cap)}
    if not persisting:
        body["feedback_log"]["error"] = wal["last_error"] or "the write-ahead log cannot be written"
    return JSONResponse(status_code=200 if persisting else 503, content=body)


@api.post("/recommend", response_model=RecommendAnswer, response_model_exclude_unset=True)
async def recommend(req: RecommendRequest, request: Request) -> dict:
    """With shopper tokens on, ``user_id``/``session_id`` must be the token's shopper; a request
    naming neither starts a session and its answer carries ``session_token`` for it."""
    SHOPPERS.for_recommend(request.headers.get(TOKEN_HEADER), req.user_id, req.session_id)
    body = await _runtime(request).service.recommend(req)
    if SHOPPERS.on and "session_id" in body and req.session_id is None:
        body["session_token"] = SHOPPERS.session_token(body["session_id"])
    _note(request, request_id=body["request_id"], items=len(body["items"]), model_version=body["model_version"],
          policy_version=body["policy_version"])
    return body


@api.post("/feedback", response_model=FeedbackAnswer)
async def feedback(req: FeedbackRequest, request: Request) -> dict:
    """Accepted only for an item that the request showed; the same (request, item, event)
    counts once (a repeat answers ``duplicate`` and records nothing). With shopper tokens on, only
    for a request issued to the token's shopper."""
    _note(request, request_id=req.request_id, feedback=req.event)
    identity = SHOPPERS.for_feedback(request.headers.get(TOKEN_HEADER))
    return await _runtime(request).service.feedback(req, identity)


@api.post("/items", status_code=201, response_model=ItemAdded)
async def add_item(item: NewItem, request: Request) -> dict:
    """Add a catalogue item at runtime: stored durably, given a content vector by the models'
    item towers and put into the vector index, recommendable at once -- no retrain."""
    return await _runtime(request).service.add_item(item)


@api.get("/items/{item_id}/similar", response_model=SimilarAnswer)
async def similar(item_id: str, request: Request, k: int = 10) -> dict:
    return await _runtime(request).service.similar(item_id, k)
