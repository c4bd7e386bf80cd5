"""The Raycart Serve application: HTTP ingress -> retriever -> ranker (batched) -> policy actor.

Deployments are composed by passing ``DeploymentHandle``s (Ray 2.60 has no DAGDriver).
``build_app(args)`` is the entry point for ``serve run serving.app:build_app`` / ``serve deploy
cluster/serve.yaml`` and for ``raycart serve``.

Endpoints: ``POST /recommend``, ``POST /feedback``, ``POST /items`` (a new item, recommendable at
once), ``GET /items/{id}/similar``, ``GET /healthz`` (live), ``GET /readyz`` (models loaded).
Every impression and feedback event is appended to the durable feedback log
(:mod:`serving.feedback_log`) **before** the response acknowledges it, and every accepted event
joins the shopper's real-time state (:mod:`serving.user_state`), which the next request reads.
"""


import asyncio
import hashlib
import json
import logging
import threading
import time
import uuid

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from serving.catalog import Catalog
from serving.deployments import ItemRegistry, Ranker, Retriever
from serving.feedback_log import FeedbackLog, FeedbackLogConfig
from serving.netbind import bind_replica_grpc_to_node_address
from serving.policy import Policy
from serving.schemas import (
    AppArgs,
    FeedbackRequest,
    ModelSpec,
    NewItem,
    PolicyInputs,
    RecommendRequest,
)
from serving.security import ApiKeys, Guard, GuardSettings
from serving.state_store import StateAccess, StateUnavailable, UserStateStore
from serving.user_state import HISTORY_EVENTS, Outcome, UserView
from training.data.funnel import STAGES

# per-deployment autoscaling with AppArgs.autoscaling (target ongoing requests per replica; the
# Ranker's are high so that @serve.batch fills batches before a new replica is added)
AUTOSCALING = {
    "Ingress": {"target_ongoing_requests": 8, "upscale_delay_s": 3, "downscale_delay_s": 15},
    "Retriever": {"target_ongoing_requests": 4, "upscale_delay_s": 3, "downscale_delay_s": 15},
    "Ranker": {"target_ongoing_requests": 16, "upscale_delay_s": 3, "downscale_delay_s": 15},
}
ITEMS_SYNC_S = 1.0  # how stale an ingress replica's view of items added elsewhere may get
LOG_TICK_S = 0.5  # the feedback log's background publisher wakes this often
UNHEALTHY_AFTER_S = 30.0  # WAL appends failing this long: the replica reports unhealthy and is replaced

log = logging.getLogger(__name__)
api = FastAPI(title="Raycart", description="Retrieve-then-rank recommendations with a learning policy.")
# keys, body cap and deadline: filled in by the Ingress (one per process) from its AppArgs
GUARD = GuardSettings()
api.add_middleware(Guard, settings=GUARD)


class NotPersisted(HTTPException):
    def __init__(self, exc: BaseException):
        super().__init__(503, f"could not be recorded durably ({type(exc).__name__}); nothing was acknowledged, "
                              "retry later")


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with where and what, without echoing the input (NaN/Infinity are not JSON: echoing
    them turned a bad request into a 500)."""
    detail = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))[:300], "type": e.get("type")}
              for e in exc.errors()[:20]]
    return JSONResponse(status_code=422, content={"detail": detail})


@serve.deployment(max_ongoing_requests=64)  # async: waits on the other deployments, not the CPU
@serve.ingress(api)
class Ingress:
    def __init__(self, retriever: DeploymentHandle, ranker: DeploymentHandle, policy: DeploymentHandle,
                 registry: DeploymentHandle, state: DeploymentHandle | None, args: AppArgs,
                 retrain: DeploymentHandle | None = None):
        bind_replica_grpc_to_node_address()
        GUARD.keys = ApiKeys.load(args.api_keys_file)
        GUARD.max_body_bytes, GUARD.timeout_s = args.max_body_bytes, args.request_timeout_s
        self.retriever, self.ranker, self.policy, self.args = retriever, ranker, policy, args
        self.registry, self.retrain = registry, retrain  # retrain: the schedule (serving.retrain_schedule), if on
        self.state = StateAccess(args, state)
        self.catalog = Catalog.load(args.data_dir)
        self.synced_at = 0.0  # when the runtime items were last pulled from the registry
        self.sync_lock = asyncio.Lock()
        try:
            writer = serve.get_replica_context().replica_id.unique_id
        except Exception:  # noqa: BLE001 -- outside a replica (local testing mode)
            writer = uuid.uuid4().hex[:12]
        self.log = FeedbackLog(FeedbackLogConfig(root=args.feedback_root, wal_dir=args.wal_dir, background=True,
                                                 retry_max_s=args.wal_retry_max_s), f"ingress-{writer}")
        self.append_failing_since: float | None = None  # the WAL itself cannot be written
        self.stop = threading.Event()
        self.publisher = threading.Thread(target=self._publish_loop, name="feedback-log", daemon=True)
        self.publisher.start()

    def _publish_loop(self) -> None:
        """Seals and publishes the feedback log off the request path, also when no request comes."""
        while not self.stop.wait(LOG_TICK_S):
            try:
                self.log.tick()
            except Exception as exc:  # noqa: BLE001 -- the log keeps the segment and retries
                log.warning("feedback log tick failed: %s", exc)

    async def _append(self, table: str, records: list[dict]) -> None:
        """Durably log (fsync off the event loop); 503 when the WAL cannot be written."""
        try:
            await asyncio.to_thread(self.log.append_many, table, records)
        except OSError as exc:
            self.append_failing_since = self.append_failing_since or time.monotonic()
            raise NotPersisted(exc) from None
        self.append_failing_since = None

    def check_health(self) -> None:
        """Serve's health check: a replica that cannot write its WAL for a while is replaced."""
        since = self.append_failing_since
        if since is not None and time.monotonic() - since > UNHEALTHY_AFTER_S:
            raise RuntimeError(f"the feedback WAL has not been writable for {time.monotonic() - since:.0f} s")

    def __del__(self):
        try:
            self.stop.set()
            self.publisher.join(timeout=30)  # no publish runs while close() publishes and unlocks
            self.log.close()
        except Exception:  # noqa: BLE001
            pass

    async def _sync(self, force: bool = False) -> None:
        """Learn the items added at runtime (through any ingress replica), in registry order: at
        most every ITEMS_SYNC_S, or at once when a request names an id not known here."""
        if not force and time.monotonic() - self.synced_at < ITEMS_SYNC_S:
            return
        async with self.sync_lock:
            for record in await self.registry.since.remote(self.catalog.added):
                self.catalog.add(record)
            self.synced_at = time.monotonic()

    async def _unknown(self, ids: list[str]) -> list[str]:
        missing = [x for x in ids if x not in self.catalog.item_index]
        if missing:
            await self._sync(force=True)
            missing = [x for x in missing if x not in self.catalog.item_index]
        return missing

    @api.get("/healthz")
    def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self) -> JSONResponse:
        """503 while this replica cannot persist (its WAL cannot be written, or sealed segments
        cannot be published: they are kept and retried); ``degraded`` while the user state is down."""
        _, version, state_ok = await asyncio.gather(self.retriever.ready.remote(), self.ranker.ready.remote(),
                                                    self.state.ping())
        await self._sync()
        wal = self.log.health()
        persisting = wal["ok"] and self.append_failing_since is None
        # a state backend that is down degrades answers (stored history only), it does not stop them
        status = "not ready" if not persisting else "ready" if state_ok else "degraded"
        body = {"status": status, "items": self.catalog.num_items, "model_version": version,
                "user_state": "ok" if state_ok else "unavailable",
                "feedback_log": {"ok": persisting, "unpublished_segments": wal["unpublished_segments"],
                                 "corrupt_lines": wal["corrupt_lines"]}}
        if not persisting:
            body["feedback_log"]["error"] = wal["last_error"] or "the write-ahead log cannot be written"
        return JSONResponse(status_code=200 if persisting else 503, content=body)

    @api.post("/recommend")
    async def recommend(self, req: RecommendRequest) -> dict:
        await self._sync()
        cat = self.catalog
        session = None if req.user_id else (req.session_id or uuid.uuid4().hex)
        key = f"u:{req.user_id}" if req.user_id else f"s:{session}"
        view, state = await self._view(key)
        user, history, times = cat.history_of(req.user_id)
        if req.history:
            unknown = await self._unknown(req.history)
            if unknown:
                raise HTTPException(400, f"history: unknown item id(s) {unknown[:5]}")
            history = np.r_[history, [cat.item_index[x] for x in req.history]].astype(np.int64)
            times = np.r_[times, np.full(len(req.history), -1)].astype(np.int64)  # undated: "now"
        await self._unknown([x for answer in view.shown for x in answer])  # learn runtime items it names
        known = cat.item_index
        live = [known[x] for x in view.history() if x in known]
        if live:  # engaged with since training: the newest part of the history, dated "now"
            history = np.r_[history, live].astype(np.int64)
            times = np.r_[times, np.full(len(live), -1)].astype(np.int64)
        first = np.sort(np.unique(history, return_index=True)[1])  # first occurrence each
        history, times = history[first], times[first]
        bad = await self._unknown(req.filters.exclude)
        if bad:
            raise HTTPException(400, f"filters.exclude: unknown item id(s) {bad[:5]}")
        exclude = {cat.item_index[x] for x in req.filters.exclude}
        exclude |= {known[x] for x in view.ignored(self.args.exclude_shown) if x in known}
        added = cat.added  # every replica answers with at least these runtime items applied
        seen = [(known[x], c) for x, c in view.impressions() if x in known]
        inputs = PolicyInputs(recent=live[-5:], shown=[i for i, _ in seen], clicked=[c for _, c in seen],
                              explore=self.args.explore_candidates, dim=self.args.policy_item_dim,
                              bandwidth=self.args.policy_bandwidth)
        cands = await self.retriever.candidates.remote(history.tolist(), times.tolist(), added, inputs)
        deepest = view.deepest()
        answer = await self.ranker.rank.remote({
            "history": history.tolist(), "user": user, "items_version": added, "items": cands["items"],
            "dense": cands["dense"],
            "live_stages": {known[x]: STAGES[e] for x, e in deepest.items() if x in known}})
        ranked, model_version = answer["ranked"], answer["model_version"]
        f = req.filters
        kept = [r for r in ranked if r["item"] not in exclude and cat.allowed(r["item"], f.category, f.price_min,
                                                                               f.price_max)]
        request_id = uuid.uuid4().hex
        for r in kept:
            r["item_id"] = cat.item_ids[r["item"]]
        rows = [r["retriever_rank"] for r in kept]
        feats, vecs = (cands["policy"][rows], cands["vectors"][rows]) if kept else (None, None)
        stale = view.stale(self.args.stale_alpha)
        explore = (self.args.stale_epsilon, np.asarray(rows) >= cands["explore_from"]) if stale else (None, None)
        chosen = await self.policy.choose.remote(request_id, kept, req.context, req.k, feats, vecs, *explore)
        slate, policy_version = chosen["slate"], chosen["version"]
        now = time.time()
        context_hash = hashlib.sha256(json.dumps(req.context, sort_keys=True).encode()).hexdigest()[:16]
        out = []
        for s in slate:
            r = kept[s["index"]]
            out.append({"item_id": r["item_id"], "title": cat.titles[r["item"]], "position": s["position"],
                        "score": round(r["score"], 5), "propensity": round(s["propensity"], 6),
                        "greedy": s["greedy"],
                        "reason": self._reason(r["reason"]),
                        **{k: r[k] for k in ("p_cart", "p_purchase") if k in r}})
        await self._append("impressions", [
            {"request_id": request_id, "user_id": req.user_id, "context_hash": context_hash,
             "num_candidates": len(kept), "item_id": o["item_id"], "position": o["position"],
             "propensity": o["propensity"], "greedy": o["greedy"], "score": o["score"],
             "model_version": model_version,
             "policy_version": policy_version, "timestamp": now} for o in out])
        if state != "unavailable":
            try:  # register what was shown: feedback is accepted for exactly these items
                await self.state.issue(request_id, key, [o["item_id"] for o in out])
            except StateUnavailable:
                state = "unavailable"
        body = {"request_id": request_id, "user_known": user is not None, "items": out,
                "model_version": model_version, "policy_version": policy_version, "state": state,
                "live_history": len(live), "explore_harder": stale}
        if session is not None:
            body["session_id"] = session
        return body

    async def _view(self, key: str) -> tuple[UserView, str]:
        """The key's real-time state and how it was read: ``live``, ``off`` (realtime_state is
        off) or ``unavailable`` (backend down: the stored history alone is used)."""
        if not self.args.realtime_state:
            return UserView(), "off"
        try:
            return await self.state.view(key), "live"
        except StateUnavailable:
            return UserView(), "unavailable"

    def _reason(self, reason: dict) -> dict:
        src = reason.get("because_of")
        return {"because_you_saw": self.catalog.item_ids[src] if src is not None else None,
                "shared": reason.get("shared", [])}

    @api.post("/feedback")
    async def feedback(self, req: FeedbackRequest) -> dict:
        """Accepted only for an item that the request showed; the same (request, item, event)
        counts once (a repeat answers ``duplicate`` and records nothing)."""
        if await self._unknown([req.item_id]):
            raise HTTPException(400, f"item_id: unknown item {req.item_id!r}")
        # checked, then logged durably, then recorded: an event whose log write failed (503) or
        # was cut off is not yet "recorded", so the client's retry is not taken for a duplicate
        # (a retry after a cut between log and record logs it twice: read_feedback de-duplicates)
        try:
            rec = await self.state.check(req.request_id, req.item_id, req.event)
        except StateUnavailable as exc:
            raise HTTPException(503, f"feedback not recorded, retry later: {exc}") from None
        if rec.outcome is Outcome.UNKNOWN_REQUEST:
            raise HTTPException(404, f"request_id: {req.request_id!r} was not issued by this app (or has expired)")
        if rec.outcome is Outcome.NOT_SHOWN:
            raise HTTPException(400, f"item_id: request {req.request_id!r} did not show item {req.item_id!r}")
        if rec.outcome is Outcome.DUPLICATE:
            return {"status": "duplicate", "learned": False, "history": False}
        await self._append("events", [{"request_id": req.request_id, "item_id": req.item_id, "event": req.event,
                                       "timestamp": time.time()}])
        try:
            rec = await self.state.record(req.request_id, req.item_id, req.event)
        except StateUnavailable as exc:
            raise HTTPException(503, f"feedback logged but not applied, retry: {exc}") from None
        if rec.outcome is Outcome.DUPLICATE:  # a concurrent copy of this event got there first
            return {"status": "duplicate", "learned": False, "history": False}
        if rec.outcome is not Outcome.RECORDED:
            raise HTTPException(404, f"request_id: {req.request_id!r} has expired")
        learned = self.args.policy_learning and await self.policy.feedback.remote(req.request_id, req.item_id,
                                                                                   req.event)
        return {"status": "recorded", "learned": bool(learned), "history": req.event in HISTORY_EVENTS}

    @api.post("/items", status_code=201)
    async def add_item(self, item: NewItem) -> dict:
        """Add a catalogue item at runtime: stored durably, given a content vector by the models'
        item towers and put into the vector index, recommendable at once -- no retrain."""
        record = item.model_dump()
        if not await self._unknown([item.item_id]):
            raise HTTPException(409, f"item_id: {item.item_id!r} is already in the catalogue")
        problem = await self.retriever.check_content.remote(record)  # embedded there first
        if problem:
            raise HTTPException(400, problem)
        if await self.registry.add.remote(record) < 0:
            raise HTTPException(409, f"item_id: {item.item_id!r} is already in the catalogue")
        await self._sync(force=True)
        return {"item_id": item.item_id, "status": "added", "items_added": self.catalog.added}

    @api.get("/items/{item_id}/similar")
    async def similar(self, item_id: str, k: int = 10) -> dict:
        if not 1 <= k <= 100:
            raise HTTPException(422, "k must be between 1 and 100")
        if await self._unknown([item_id]):
            raise HTTPException(404, f"unknown item {item_id!r}")
        cands = await self.retriever.candidates.remote([self.catalog.item_index[item_id]], None, self.catalog.added)
        items = [int(i) for i in cands["items"][:k] if i >= 0]
        return {"item_id": item_id, "similar": [{"item_id": self.catalog.item_ids[i],
                                                 "title": self.catalog.titles[i]} for i in items]}


def build_app(args: dict | AppArgs) -> serve.Application:
    """The application graph; ``args`` as in :class:`serving.schemas.AppArgs`."""
    a = args if isinstance(args, AppArgs) else AppArgs(**args)
    cpus = {"ray_actor_options": {"num_cpus": a.replica_cpus}}

    def scaled(name: str) -> dict:
        if not a.autoscaling:
            return cpus
        return {**cpus, "autoscaling_config": {"min_replicas": 1, "max_replicas": a.max_replicas,
                                               **AUTOSCALING[name]}}

    # the model is the Retriever's and Ranker's user_config, not a constructor argument: a new
    # model_dir / model_version then reconfigures the running replicas instead of replacing them
    model = {"user_config": ModelSpec(model_dir=a.model_dir, model_version=a.model_version).model_dump()}
    fixed = a.model_copy(update={"model_dir": "(user_config)", "model_version": "(user_config)"})
    registry = ItemRegistry.options(**cpus).bind(fixed)
    state = UserStateStore.options(**cpus).bind(fixed) if a.user_state == "embedded" else None
    retriever = Retriever.options(**scaled("Retriever"), **model).bind(fixed, registry)
    ranker = Ranker.options(**scaled("Ranker"), **model).bind(fixed, registry)
    retrain = None
    if a.retrain_every_events is not None or a.retrain_every_minutes is not None:
        from serving.retrain_schedule import RetrainTrigger

        retrain = RetrainTrigger.options(ray_actor_options={"num_cpus": 0}).bind(a)
    return Ingress.options(**scaled("Ingress")).bind(retriever, ranker, Policy.options(**cpus).bind(fixed), registry,
                                                     state, fixed, retrain)
