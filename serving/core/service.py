"""``RecommendService``: the whole request path as one Ray-free object.

History and real-time state lookup, candidate retrieval through the vector index, features,
ranking, filters, the policy's choice and the feedback-log records -- for ``/recommend``,
``/feedback``, ``POST /items`` and similar items -- with typed messages between the parts
(:mod:`serving.core.messages`). What it talks to comes in through small interfaces (ports):

* :class:`Backend` -- retrieval + ranking, the policy, the registry of runtime items. In one process
  :class:`~serving.core.local.LocalBackend` calls :mod:`serving.core.retrieve_rank` directly; in the
  Serve app (:mod:`serving.deploy.app`) the same calls go through ``DeploymentHandle``s to the
  replicas holding them.
* the user state (``view/issue/check/record/ping``): :class:`~serving.core.local.LocalState` over
  :class:`~serving.state.memory.MemoryUserState` here, :class:`serving.deploy.state_store.StateAccess`
  (the embedded-store deployment or Redis) in the Serve app;
* ``append(table, records)``: the durable feedback log (:mod:`serving.feedback.log`);
* ``metrics``: what it counts (impressions, feedback, clicks and reward by the versions that
  answered, runtime items), :class:`~serving.core.metrics.Metrics`; records nothing by default.

Per-shopper rate limits and the cap on feedback events per answer (``AppArgs.rate_limit_user_*``,
``feedback_per_request``; :mod:`serving.core.ratelimit`) are kept here, in this process: whom a
``/feedback`` acts for is known only once its request is looked up.

Errors the client caused or should retry are :class:`ServiceError` (an HTTP status and a
message); the HTTP layer (:mod:`serving.edge.http`) turns them into responses. Unit-tested without
Ray (``tests/unit/serving/core/test_service.py``).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from serving.core.catalog import Catalog
from serving.core.messages import (
    CandidateQuery,
    CandidateSet,
    PolicyQuery,
    RankedList,
    Slate,
)
from serving.core.metrics import NO_METRICS, Metrics
from serving.core.ratelimit import RequestCap, buckets, retry_after
from serving.core.schemas import (
    AppArgs,
    FeedbackRequest,
    NewItem,
    PolicyInputs,
    RecommendRequest,
)
from serving.state.user_state import (
    HISTORY_EVENTS,
    Outcome,
    Recorded,
    StateUnavailable,
    UserStateConfig,
    UserView,
    stale_strength,
)
from training.data.funnel import STAGES

ITEMS_SYNC_S = 1.0  # how stale this service's view of items added elsewhere may get
FORCED_SYNC_S = 0.2  # an id not known here asks the registry, at most this often
# answers whose (model, policy) versions are kept for the metrics of their feedback; older ones'
# feedback (and feedback for another replica's answers) counts under "unknown"
VERSIONS_KEPT = 50_000


def shopper_of(key: str | None) -> str | None:
    """The shopper a user-state key belongs to, as a shopper token names it: a user id the
    catalogue does not know is held under ``a:<id>`` (like a session) but is the token's ``u:<id>``."""
    return f"u:{key[2:]}" if key is not None and key.startswith("a:") else key


@dataclass
class _Shopper:
    """Who a /recommend is for: the user-state key, the known user's internal id (None: not in the
    catalogue), the session (None: a user) and the history the ranker reads, oldest first (``times``
    -1: undated, "now")."""

    key: str
    user: int | None
    session: str | None
    history: np.ndarray
    times: np.ndarray

    def extend(self, items: list[int]) -> None:
        self.history = np.r_[self.history, items].astype(np.int64)
        self.times = np.r_[self.times, np.full(len(items), -1)].astype(np.int64)


@dataclass(frozen=True)
class _Ranked:
    """The candidates, their ranking, and which ranked ones the filters ``keep`` (``rows``: into
    the candidate set, ``items``: their internal ids, best first)."""

    cands: CandidateSet
    ranked: RankedList
    keep: np.ndarray
    rows: np.ndarray
    items: np.ndarray
    # the shopper has stopped engaging (stale_strength > 0): explore harder, by how sure that is
    strength: float = 0.0

    @property
    def stale(self) -> bool:
        return self.strength > 0


class ServiceError(Exception):
    """A request the service refuses (4xx) or cannot serve now (503); ``detail`` says why."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


class Backend(Protocol):
    async def retrieve_and_rank(self, q: CandidateQuery, user: int | None,
                                live_stages: dict[int, int]) -> tuple[CandidateSet, RankedList]: ...
    async def similar(self, item: int, k: int, items_version: int) -> list[int]: ...
    async def choose(self, q: PolicyQuery) -> Slate: ...
    async def learn(self, request_id: str, item_id: str, event: str) -> bool: ...
    async def since(self, n: int) -> list[dict]: ...
    async def add_item(self, record: dict) -> int: ...
    async def check_content(self, record: dict) -> str | None: ...
    async def ready(self) -> str: ...


class StatePort(Protocol):
    async def view(self, key: str) -> UserView: ...
    async def issue(self, request_id: str, key: str, items: list[str]) -> None: ...
    async def check(self, request_id: str, item_id: str, event: str) -> Recorded: ...
    async def record(self, request_id: str, item_id: str, event: str) -> Recorded: ...
    async def ping(self) -> bool: ...


# durably log records of a table, or raise ServiceError(503); the HTTP edge's append logs them
# pending, acknowledged only if the request's response is a 2xx (serving.edge.http.Acknowledged)
Append = Callable[[str, list[dict]], Awaitable[None]]


class RecommendService:
    def __init__(self, args: AppArgs, catalog: Catalog, backend: Backend, state: StatePort, append: Append,
                 metrics: Metrics = NO_METRICS):
        self.args, self.catalog, self.backend, self.state, self.append = args, catalog, backend, state, append
        self.metrics = metrics
        self.versions: collections.OrderedDict[str, tuple[str, str]] = collections.OrderedDict()
        self.synced_at = 0.0  # when the runtime items were last pulled from the registry
        self.sync_began = -1.0  # when the last pull began (concurrent callers share one)
        self.sync_lock = asyncio.Lock()
        self.per_user = buckets(args.rate_limit_user_per_s, args.rate_limit_user_burst, args.rate_limit_max_buckets)
        self.cap = RequestCap(args.feedback_per_request, args.rate_limit_max_buckets) \
            if args.feedback_per_request else None

    def admit(self, key: str) -> None:
        """Take a request of shopper ``key`` (``u:``/``s:``) from its bucket; 429 when it is empty."""
        if self.per_user is None:
            return
        wait = self.per_user.take(key)
        if wait > 0:
            self.metrics.rate_limited("user")
            raise ServiceError(429, f"rate limit of this shopper ({self.per_user.describe()}) reached; retry after "
                                    f"{retry_after(wait)} s", {"Retry-After": retry_after(wait)})

    # -- runtime items --------------------------------------------------------------------------

    async def sync(self, force: bool = False) -> None:
        """Learn the items added at runtime (through any replica), in registry order: at most every
        ITEMS_SYNC_S, or at once when a request names an id not known here."""
        asked = time.monotonic()
        if not force and asked - self.synced_at < ITEMS_SYNC_S:
            return
        async with self.sync_lock:
            if self.sync_began >= asked:  # a sync that began after this call asked has just finished
                return
            self.sync_began = time.monotonic()
            try:
                records = await self.backend.since(self.catalog.added)
            except ServiceError:  # the registry is restarting: a routine sync waits for the next one
                if force:
                    raise
                self.synced_at = time.monotonic()
                return
            for record in records:
                self.catalog.add(record)
            self.synced_at = time.monotonic()
        self.metrics.runtime_items(self.catalog.added)

    async def unknown(self, ids: list[str]) -> list[str]:
        missing = [x for x in ids if x not in self.catalog.item_index]
        # ask the registry, but not for every request: a stream of made-up ids (/shop/images/<random>,
        # say) costs one registry call per FORCED_SYNC_S, not one each
        if missing and time.monotonic() - self.synced_at >= FORCED_SYNC_S:
            await self.sync(force=True)
            missing = [x for x in missing if x not in self.catalog.item_index]
        return missing

    # -- /recommend ------------------------------------------------------------------------------

    async def view(self, key: str) -> tuple[UserView, str]:
        """The key's real-time state and how it was read: ``live``, ``off`` (realtime_state is
        off) or ``unavailable`` (backend down: the stored history alone is used)."""
        if not self.args.realtime_state:
            return UserView(), "off"
        try:
            return await self.state.view(key), "live"
        except StateUnavailable:
            return UserView(), "unavailable"

    async def recommend(self, req: RecommendRequest) -> dict:
        """One answer, in named steps: who asks (:meth:`_shopper`), their history with what they
        did since training (:meth:`_history`), the candidates retrieved, ranked and filtered by one
        model version (:meth:`_ranked`), the policy's slate (:meth:`_policy_query`), then the answer
        logged and its items registered for feedback (:meth:`_answer`)."""
        who = self._shopper(req)
        if req.user_id or req.session_id:  # a new session is no one's yet (the per-key limit holds it)
            self.admit(who.key)
        await self.sync()
        view, state = await self.view(who.key)
        live = await self._history(req, who, view)
        ranked = await self._ranked(req, who, view, live)
        query = self._policy_query(req, view, ranked)
        slate = await self.backend.choose(query)
        return await self._answer(req, who, state, ranked, query, slate, live)

    def _shopper(self, req: RecommendRequest) -> _Shopper:
        """The state key, the known user's internal id and stored history, or a new session."""
        session = None if req.user_id else (req.session_id or uuid.uuid4().hex)
        user, history, times = self.catalog.history_of(req.user_id)
        # a user id the catalogue does not know could be made up: kept like a session (TTL, LRU cap)
        key = (f"u:{req.user_id}" if user is not None else f"a:{req.user_id}") if req.user_id else f"s:{session}"
        return _Shopper(key, user, session, history, times)

    async def _history(self, req: RecommendRequest, who: _Shopper, view: UserView) -> list[int]:
        """Extend ``who``'s history with the request's and the live items (engaged with since
        training, dated "now"), first occurrence each; the live items' internal ids."""
        cat = self.catalog
        if req.history:
            unknown = await self.unknown(req.history)
            if unknown:
                raise ServiceError(400, f"history: unknown item id(s) {unknown[:5]}")
            who.extend([cat.item_index[x] for x in req.history])
        await self.unknown([x for answer in view.shown for x in answer])  # learn runtime items it names
        live = [cat.item_index[x] for x in view.history() if x in cat.item_index]
        who.extend(live)
        first = np.sort(np.unique(who.history, return_index=True)[1])
        who.history, who.times = who.history[first], who.times[first]
        return live

    async def _ranked(self, req: RecommendRequest, who: _Shopper, view: UserView, live: list[int]) -> _Ranked:
        """The candidates and their ranking by one model version, without the excluded items and
        those outside the request's filters."""
        cat, args = self.catalog, self.args
        bad = await self.unknown(req.filters.exclude)
        if bad:
            raise ServiceError(400, f"filters.exclude: unknown item id(s) {bad[:5]}")
        known = cat.item_index
        exclude = {known[x] for x in req.filters.exclude}
        # a shopper who stopped engaging is shown nothing of what they just ignored; a steady
        # one's ignored items stay (the policy's novelty and nearby-click-rate columns weigh them):
        # excluding them too pushed a steady shopper down the ranking (benchmarks/closed_loop.py)
        strength = stale_strength(view.surprise(), args.stale_alpha, args.stale_full_alpha)
        if strength >= 1:  # sure enough: nothing of what they just ignored
            exclude |= {known[x] for x in view.ignored(args.exclude_shown) if x in known}
        seen = [(known[x], c) for x, c in view.impressions() if x in known]
        inputs = PolicyInputs(recent=live[-5:], shown=[i for i, _ in seen], clicked=[c for _, c in seen],
                              explore=args.explore_candidates, near=args.recent_candidates,
                              dim=args.policy_item_dim,
                              bandwidth=args.policy_bandwidth)
        funnel = {known[x]: STAGES[e] for x, e in view.deepest().items() if x in known}
        # cat.added: every step answers with at least these runtime items applied
        cands, ranked = await self.backend.retrieve_and_rank(
            CandidateQuery(who.history, who.times, cat.added, inputs), who.user, funnel)
        if cands.model_version and cands.model_version != ranked.model_version:  # never answer a mixed pair
            raise ServiceError(503, f"retrieved by model {cands.model_version!r} but ranked by "
                                    f"{ranked.model_version!r} (a rollout is under way); retry")
        f = req.filters
        items = cands.items[ranked.order]
        keep = np.array([int(i) not in exclude and cat.allowed(int(i), f.category, f.price_min, f.price_max)
                         for i in items], dtype=bool)
        return _Ranked(cands, ranked, keep, rows=ranked.order[keep], items=items[keep], strength=strength)

    def _policy_query(self, req: RecommendRequest, view: UserView, r: _Ranked) -> PolicyQuery:
        rows, stale = r.rows, r.stale
        some = len(rows) > 0
        return PolicyQuery(
            request_id=uuid.uuid4().hex, item_ids=[self.catalog.item_ids[int(i)] for i in r.items],
            scores=r.ranked.scores[r.keep], retriever_rank=rows, context=req.context, k=req.k,
            features=r.cands.policy[rows] if some else None, vectors=r.cands.vectors[rows] if some else None,
            p_cart=r.ranked.p_cart[r.keep] if r.ranked.p_cart is not None else None,
            p_purchase=r.ranked.p_purchase[r.keep] if r.ranked.p_purchase is not None else None,
            epsilon=max(self.args.policy_epsilon, self.args.stale_epsilon * r.strength) if stale else None,
            explore_pool=(rows >= r.cands.explore_from) if stale else None,
            diversity=self.args.policy_diversity * r.strength if stale else 0.0)

    async def _answer(self, req: RecommendRequest, who: _Shopper, state: str, r: _Ranked, query: PolicyQuery,
                      slate: Slate, live: list[int]) -> dict:
        """The slate as the answer's items; its impressions logged, then registered with the user
        state (feedback is accepted for exactly these items)."""
        cat, ranked = self.catalog, r.ranked
        request_id, item_ids, scores = query.request_id, query.item_ids, query.scores
        p_cart, p_purchase = query.p_cart, query.p_purchase
        reasons = [reason for reason, k in zip(ranked.reasons, r.keep) if k]
        out: list[dict[str, Any]] = []
        for s in slate.slots:
            j = s.index
            entry = {"item_id": item_ids[j], "title": cat.titles[int(r.items[j])], "position": s.position,
                     "score": round(float(scores[j]), 5), "propensity": round(s.propensity, 6),
                     "greedy": s.greedy, "reason": self._reason(reasons[j])}
            if p_cart is not None and p_purchase is not None:  # the ranker gives both or neither
                entry["p_cart"] = float(p_cart[j])
                entry["p_purchase"] = float(p_purchase[j])
            out.append(entry)
        now = time.time()
        context_hash = hashlib.sha256(json.dumps(req.context, sort_keys=True).encode()).hexdigest()[:16]
        await self.append("impressions", [
            {"request_id": request_id, "user_id": req.user_id, "context_hash": context_hash,
             "num_candidates": len(item_ids), "item_id": o["item_id"], "position": o["position"],
             "propensity": o["propensity"], "greedy": o["greedy"], "score": o["score"],
             "model_version": ranked.model_version, "retriever_version": r.cands.model_version or None,
             "policy_version": slate.policy_version, "timestamp": now} for o in out])
        self.metrics.impressions(len(out), ranked.model_version, slate.policy_version)
        self.versions[request_id] = (ranked.model_version, slate.policy_version)
        while len(self.versions) > VERSIONS_KEPT:
            self.versions.popitem(last=False)
        if state != "unavailable":
            try:  # register what was shown: feedback is accepted for exactly these items
                await self.state.issue(request_id, who.key, [o["item_id"] for o in out])
            except StateUnavailable:
                state = "unavailable"
        body = {"request_id": request_id, "user_known": who.user is not None, "items": out,
                "model_version": ranked.model_version, "policy_version": slate.policy_version, "state": state,
                "live_history": len(live), "explore_harder": query.epsilon is not None}
        if who.session is not None:
            body["session_id"] = who.session
        return body

    def _reason(self, reason: dict) -> dict:
        src = reason.get("because_of")
        return {"because_you_saw": self.catalog.item_ids[src] if src is not None else None,
                "shared": reason.get("shared", [])}

    # -- /feedback -------------------------------------------------------------------------------

    async def feedback(self, req: FeedbackRequest, identity: str | None = None) -> dict:
        """Accepted only for an item that the request showed; the same (request, item, event)
        counts once (a repeat answers ``duplicate`` and records nothing). ``identity`` (a verified
        shopper token's ``u:``/``s:`` subject; None: not checked): a request issued for another
        shopper is refused (403)."""
        if await self.unknown([req.item_id]):
            raise ServiceError(400, f"item_id: unknown item {req.item_id!r}")
        # checked, then logged durably, then recorded: an event whose log write failed (503) or
        # was cut off is not yet "recorded", so the client's retry is not taken for a duplicate
        # (a retry after a cut between log and record logs it twice: the HTTP edge acknowledges
        # only the copy whose 200 went out, and read_feedback counts acknowledged rows once)
        try:
            rec = await self.state.check(req.request_id, req.item_id, req.event)
        except StateUnavailable as exc:
            raise ServiceError(503, f"feedback not recorded, retry later: {exc}") from None
        if rec.outcome is Outcome.UNKNOWN_REQUEST:
            raise ServiceError(404, f"request_id: {req.request_id!r} was not issued by this app (or has expired)")
        if identity is not None and shopper_of(rec.key) != identity:
            raise ServiceError(403, f"request_id: {req.request_id!r} was issued for another shopper than this "
                                    "shopper token's")
        if rec.key is not None:
            self.admit(rec.key)
        if rec.outcome is Outcome.NOT_SHOWN:
            raise ServiceError(400, f"item_id: request {req.request_id!r} did not show item {req.item_id!r}")
        if rec.outcome is Outcome.DUPLICATE:
            return await self._duplicate(req)
        if self.cap is not None and not self.cap.reserve(req.request_id):
            self.metrics.rate_limited("feedback_cap")
            raise ServiceError(400, f"request_id: {req.request_id!r} has collected the most feedback events one "
                                    f"answer may ({self.cap.limit}, feedback_per_request)")
        rec = Recorded(Outcome.UNKNOWN_REQUEST)
        try:
            await self.append("events", [{"request_id": req.request_id, "item_id": req.item_id, "event": req.event,
                                          "timestamp": time.time()}])
            rec = await self.state.record(req.request_id, req.item_id, req.event)
        except StateUnavailable as exc:
            raise ServiceError(503, f"feedback logged but not applied, retry: {exc}") from None
        finally:
            if self.cap is not None and rec.outcome is not Outcome.RECORDED:  # not recorded: not counted
                self.cap.release(req.request_id)
        if rec.outcome is Outcome.DUPLICATE:  # a concurrent copy of this event got there first
            return await self._duplicate(req)
        if rec.outcome is not Outcome.RECORDED:
            raise ServiceError(404, f"request_id: {req.request_id!r} has expired")
        self._count_feedback(req, "recorded")
        learned = self.args.policy_learning and await self.backend.learn(req.request_id, req.item_id, req.event)
        return {"status": "recorded", "learned": bool(learned), "history": req.event in HISTORY_EVENTS}

    async def _duplicate(self, req: FeedbackRequest) -> dict:
        """A repeat of a recorded event. It is logged again all the same: the first copy may never
        have been acknowledged (its client got a 504 or gave up after the state recorded it), and
        this copy is what this 200 acknowledges; readers keep one copy per (request, item, event)."""
        await self.append("events", [{"request_id": req.request_id, "item_id": req.item_id, "event": req.event,
                                      "timestamp": time.time()}])
        self._count_feedback(req, "duplicate")
        return {"status": "duplicate", "learned": False, "history": False}

    def _count_feedback(self, req: FeedbackRequest, outcome: str) -> None:
        model, policy = self.versions.get(req.request_id, ("unknown", "unknown"))
        self.metrics.feedback(req.event, outcome, model, policy)

    # -- items -----------------------------------------------------------------------------------

    async def add_item(self, item: NewItem) -> dict:
        """Add a catalogue item at runtime: stored durably, given a content vector by the models'
        item towers and put into the vector index, recommendable at once -- no retrain."""
        record = item.model_dump()
        if not await self.unknown([item.item_id]):
            raise ServiceError(409, f"item_id: {item.item_id!r} is already in the catalogue")
        problem = await self.backend.check_content(record)  # embedded there first
        if problem:
            raise ServiceError(400, problem)
        if await self.backend.add_item(record) < 0:
            raise ServiceError(409, f"item_id: {item.item_id!r} is already in the catalogue")
        await self.sync(force=True)
        return {"item_id": item.item_id, "status": "added", "items_added": self.catalog.added}

    async def similar(self, item_id: str, k: int = 10) -> dict:
        if not 1 <= k <= 100:
            raise ServiceError(422, "k must be between 1 and 100")
        if await self.unknown([item_id]):
            raise ServiceError(404, f"unknown item {item_id!r}")
        items = await self.backend.similar(self.catalog.item_index[item_id], k, self.catalog.added)
        return {"item_id": item_id, "similar": [{"item_id": self.catalog.item_ids[i],
                                                 "title": self.catalog.titles[i]} for i in items]}

    async def readiness(self) -> tuple[str, bool]:
        """``(model version, whether the user state answers)``, with the runtime items synced."""
        version, state_ok = await asyncio.gather(self.backend.ready(), self.state.ping())
        await self.sync()
        return version, state_ok


def user_state_config(args: AppArgs) -> UserStateConfig:
    return UserStateConfig(max_events=args.state_max_events, exclude_shown=args.exclude_shown,
                           shown_window=args.shown_window, session_ttl_s=args.session_ttl_s,
                           user_ttl_s=args.state_user_ttl_s, max_ephemeral_keys=args.state_max_ephemeral_keys,
                           max_answer_ids=args.state_max_answer_ids, max_shown_bytes=args.state_max_shown_bytes,
                           compact_every=args.state_compact_every)
