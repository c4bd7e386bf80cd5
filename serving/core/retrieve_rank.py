"""Retrieval and ranking, the two model steps of the request path, as plain objects (no Ray).

:class:`ModelHolder` holds the served model version and the items added at runtime it has
applied; :class:`Retrieval` turns a :class:`~serving.core.messages.CandidateQuery` into a
:class:`~serving.core.messages.CandidateSet` (user tower, vector index, exploration candidates, dense
features, the policy's per-item columns); :class:`Ranking` ranks a batch of
:class:`~serving.core.messages.RankQuery`. The policy that orders the final slate is
:mod:`serving.core.policy`. :class:`~serving.core.service.RecommendService` calls them in one process
(:class:`~serving.core.local.LocalBackend`), and the Serve deployments (:mod:`serving.deploy.deployments`,
:mod:`serving.deploy.policy`) are thin adapters that place them in replicas.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import numpy as np
import torch

from serving.core.images import ImageRefused, ImageSource
from serving.core.index import IndexConfig, VectorIndex
from serving.core.messages import (
    CandidateQuery,
    CandidateSet,
    ModelVersionMismatch,
    RankedList,
    RankQuery,
)
from serving.core.metrics import NO_METRICS, Metrics
from serving.core.runtime_items import ServedModel
from serving.core.schemas import AppArgs, ModelSpec
from training.data.funnel import lookup
from training.data.interactions import Interactions
from training.inference.candidates import Candidates
from training.inference.new_items import rows_table
from training.models.bandit import (
    user_item_features,
)
from training.models.retriever import left_pad

log = logging.getLogger(__name__)

Since = Callable[[int], Awaitable[list[dict]]]  # runtime item records from position n on
# how long a replica keeps the model version a rollout replaced: a request whose candidates the
# old version retrieved is still ranked by it (a request takes well under a second; the margin
# covers a slow replica and the other stage's rollout)
ROLLOUT_GRACE_S = 120.0


def history_row(items: np.ndarray, times: np.ndarray | None, num_items: int, default_us: int = 0) -> Interactions:
    """One history row; without ``times`` every item is dated ``default_us``."""
    arr = np.asarray(items, dtype=np.int64)
    t = np.asarray(times, dtype=np.int64) if times is not None else np.full(len(arr), default_us, np.int64)
    return Interactions(np.array([0, len(arr)], dtype=np.int64), arr, t, num_items)


def spread(vecs: np.ndarray, pool: np.ndarray, avoid: np.ndarray, n: int) -> np.ndarray:
    """``n`` items of ``pool`` chosen by farthest-point sampling: each the least similar (cosine)
    to ``avoid`` and to those chosen before it -- exploration that covers the catalogue instead of
    drawing the same popular region twice (Gonzalez, "Clustering to minimize the maximum
    intercluster distance", 1985)."""
    if len(pool) <= n:
        return pool

    def unit(v: np.ndarray) -> np.ndarray:  # only the rows needed, not the whole catalogue
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-9)

    cand = unit(vecs[pool])
    closest = (cand @ unit(vecs[avoid]).T).max(axis=1) if len(avoid) else np.full(len(pool), -1.0)
    out = []
    for _ in range(n):
        j = int(np.argmin(closest))
        out.append(pool[j])
        closest = np.maximum(closest, cand @ cand[j])
        closest[j] = np.inf
    return np.asarray(out, dtype=np.int64)


def _index_of(s: ServedModel) -> VectorIndex:
    if s.index is None:
        raise RuntimeError(f"model {s.version} has no vector index here (a ModelHolder with with_index=False)")
    return s.index


class ModelHolder:
    """The served model version plus the runtime items it has applied. :meth:`load` builds a new
    version next to the old one and swaps it in once ready, so requests keep being answered during
    a rollout; runtime items are applied lazily (:meth:`current`), with this model's own towers.
    The replaced version stays held for ``grace_s`` (a request whose candidates it retrieved is
    ranked by it: one request, one model version). ``metrics`` (:mod:`serving.core.metrics`) gets the
    index size and the steps' latencies."""

    def __init__(self, args: AppArgs, since: Since, with_index: bool, metrics: Metrics = NO_METRICS,
                 grace_s: float = ROLLOUT_GRACE_S):
        self.images = ImageSource(args.image_root, args.image_max_bytes, args.image_max_pixels)
        self.since, self.with_index = since, with_index
        self.index_config = IndexConfig(kind=args.index_kind, ef_search=args.index_ef_search,
                                        ivf_nprobe=args.index_nprobe)
        self.served: ServedModel | None = None
        self.previous: ServedModel | None = None  # the version :meth:`install` replaced ...
        self.previous_until = 0.0  # ... held until then (time.monotonic())
        self.grace_s = grace_s
        self.lock = asyncio.Lock()
        self.metrics = metrics

    def build(self, spec: ModelSpec) -> ServedModel:
        """The model of ``spec``, loaded (and indexed) but not yet served: the heavy half of a
        rollout, safe to run in a worker thread while the current version keeps serving."""
        served = ServedModel(spec, self.images)
        if self.with_index:
            served.index = VectorIndex(served.pipeline.generator.retriever.item_vecs.numpy(), self.index_config)
        return served

    def install(self, served: ServedModel) -> None:
        """Serve ``served`` from now on; the version it replaces stays held for ``grace_s``."""
        old = self.served
        if old is not None and old.version != served.version:
            self.previous, self.previous_until = old, time.monotonic() + self.grace_s
        self.served = served
        if served.index is not None:
            self.metrics.index_items(len(served.index))

    def load(self, spec: ModelSpec) -> None:
        self.install(self.build(spec))

    async def catch_up(self) -> None:
        """Apply every runtime item the registry has to the current model (a replica calls it
        before it takes traffic, so its first requests do not wait for the registry)."""
        served = self._loaded()
        async with self.lock:
            served.apply(await self.since(served.applied))
        if self.with_index and served.index is not None:
            self.metrics.index_items(len(served.index))

    def _loaded(self) -> ServedModel:
        if self.served is None:
            raise RuntimeError("no model loaded yet: ModelHolder.load(spec) comes first")
        return self.served

    def held(self) -> tuple[str, ...]:
        """The versions this holder can answer with, newest first."""
        current = self._loaded()
        prev = self.previous
        if prev is not None and time.monotonic() >= self.previous_until:
            self.previous = prev = None  # past its grace: its memory goes
        return (current.version,) if prev is None else (current.version, prev.version)

    def pick(self, version: str | None, strict: bool) -> ServedModel:
        """The held model of ``version`` (None: the current one). Not held: the current one, or
        with ``strict`` a :class:`~serving.core.messages.ModelVersionMismatch`."""
        served = self._loaded()
        if version is None or version == served.version:
            return served
        held = self.held()
        if version in held and self.previous is not None:
            return self.previous
        if strict:
            raise ModelVersionMismatch(version, held)
        return served

    async def current(self, items_version: int, version: str | None = None, strict: bool = False) -> ServedModel:
        """The model of ``version`` (see :meth:`pick`) with at least ``items_version`` runtime
        items applied."""
        served = self.pick(version, strict)
        if served.applied < items_version:
            async with self.lock:
                if served.applied < items_version:
                    served.apply(await self.since(served.applied))
                    if self.with_index and served is self.served:
                        self.metrics.index_items(len(_index_of(served)))
        return served

    def version(self) -> str:
        return self._loaded().version

    def check_content(self, record: dict) -> str | None:
        """Why this model could not place a new item, or None. The item is embedded here (its
        image read through the capped, rooted reader), before anything is stored, so an item the
        replicas could not embed is never stored; its image stays a key under the image root."""
        served = self._loaded()
        enc = served.encoder
        try:
            if record.get("image") and not enc.uses_image:
                self.images.read(record["image"])  # checked all the same: the next model may read it
            if not enc.usable(rows_table([record])):
                return ("the item has no content this model reads: give attributes it was trained on"
                        + (", a title/description" if enc.uses_text else "")
                        + (", an image" if enc.uses_image else ""))
            served.embed([record])
        except ImageRefused as exc:
            return str(exc)
        except Exception as exc:  # noqa: BLE001 -- an encoder failure on this content
            return f"the item's content could not be embedded ({type(exc).__name__})"
        return None


class Retrieval:
    """User tower + the vector index over the item-embedding table (:mod:`serving.core.index`)."""

    def __init__(self, holder: ModelHolder, rng: np.random.Generator | None = None):
        self.holder = holder
        self.rng = rng or np.random.default_rng()  # exploration candidates: independent per replica

    async def candidates(self, q: CandidateQuery) -> CandidateSet:
        return self.compute(await self.holder.current(q.items_version, q.model_version), q)

    def compute(self, s: ServedModel, q: CandidateQuery) -> CandidateSet:
        """The top ``pipeline.k`` unseen items, plus the ``q.live.near`` items nearest the newest
        engaged one and ``q.live.explore`` exploration candidates (a random sample of the rest of
        the catalogue thinned by :func:`spread`), with the ranker's dense
        features, the item vectors and the policy's per-item columns
        (:func:`~training.models.bandit.user_item_features`).

        ``q.times`` (microseconds) date the history for the recent-popularity feature: -1 (items
        engaged with since training, a session's items) means "now": the end of the training
        data or the last dated item; without ``times`` everything is dated at the end. ``s``: the
        model with the query's runtime items applied (:meth:`ModelHolder.current`)."""
        started = time.perf_counter()
        pipeline = s.pipeline
        live = q.live
        times = q.times
        if times is not None:
            t = np.asarray(times, dtype=np.int64)
            now = max(pipeline.generator.end_us, int(t.max(initial=0)))
            times = np.where(t < 0, now, t)
        hist = history_row(q.history, times, pipeline.num_items, pipeline.generator.end_us)
        user, never, items, scores = self._search(s, hist, pipeline.k)
        vecs = pipeline.generator.retriever.item_vecs.numpy()
        retrieved = items[0][items[0] >= 0]
        widened = False  # candidates beyond the index's top k: scored here
        if live.near and live.recent:  # follow the newest click: its neighbours (the user tower over it alone)
            one = history_row(np.asarray(live.recent[-1:], np.int64), None, pipeline.num_items,
                              pipeline.generator.end_us)
            near = self._search(s, one, live.near, also=np.r_[hist.row(0), retrieved])[2][0]
            retrieved = np.r_[retrieved, near[near >= 0]].astype(np.int64)
            widened = True
        explore_from = len(retrieved)
        if live.explore:
            taken = np.zeros(len(vecs), dtype=bool)
            taken[never] = True
            taken[hist.row(0)] = True
            taken[retrieved] = True
            pool = np.flatnonzero(~taken)
            pool = self.rng.choice(pool, min(10 * live.explore, len(pool)), replace=False) if len(pool) else pool
            extra = spread(vecs, pool, np.r_[hist.row(0)[-20:], live.shown].astype(np.int64), live.explore)
            retrieved = np.r_[retrieved, extra]
            widened = True
        if widened:
            items = retrieved[None, :].astype(np.int64)
            scores = (vecs[items[0]] @ user[0])[None, :]
        c = pipeline.generator.from_search(hist, items, scores)
        found = c.items[0]
        safe = np.maximum(found, 0)
        policy = user_item_features(user[0], vecs[safe], vecs[live.recent] if live.recent else None, live.dim,
                                    vecs[live.shown] if live.shown else None, np.asarray(live.clicked, bool),
                                    bandwidth=live.bandwidth)
        self.holder.metrics.step("retrieval", time.perf_counter() - started)
        return CandidateSet(found, c.dense[0], policy, vecs[safe],
                            explore_from=explore_from if live.explore else len(found), model_version=s.version)

    @staticmethod
    def _search(s: ServedModel, hist: Interactions, k: int, also: np.ndarray | None = None):
        """The user vector of ``hist``, the quarantined items, and the index's top ``k`` for it,
        neither the history, the quarantined items nor ``also`` among them."""
        user = s.pipeline.generator.retriever.user_vectors(hist).numpy()
        never = np.fromiter(s.quarantined, np.int64, len(s.quarantined))
        skip = np.r_[hist.row(0), never] if also is None else np.r_[hist.row(0), never, also]
        items, scores = _index_of(s).search(user, k, [skip.astype(np.int64)])
        return user, never, items, scores

    async def similar(self, item: int, k: int, items_version: int) -> list[int]:
        """The ``k`` items nearest to ``item`` (the user tower over a one-item history; the
        index alone, no candidate features)."""
        served = await self.holder.current(items_version)
        hist = history_row(np.array([item], np.int64), None, served.pipeline.num_items, served.pipeline.generator.end_us)
        items = self._search(served, hist, k)[2][0]
        return [int(i) for i in items if i >= 0]


class Ranking:
    """The multimodal ranker over each request's candidates, a batch of requests at a time."""

    def __init__(self, holder: ModelHolder):
        self.holder = holder

    async def rank(self, queries: list[RankQuery]) -> list[RankedList | ModelVersionMismatch]:
        """Each query ranked by the model version that retrieved its candidates
        (``RankQuery.model_version``); a query whose version is no longer (or not yet) held here
        gets a :class:`~serving.core.messages.ModelVersionMismatch` in its place, not a ranking by
        another model."""
        out: list[RankedList | ModelVersionMismatch | None] = [None] * len(queries)
        groups: dict[str | None, list[int]] = {}
        for i, q in enumerate(queries):
            groups.setdefault(q.model_version, []).append(i)
        for version, idx in groups.items():
            try:
                served = await self.holder.current(max(queries[i].items_version for i in idx), version, strict=True)
            except ModelVersionMismatch as exc:
                for i in idx:
                    out[i] = exc
                continue
            for i, ranked in zip(idx, self.compute(served, [queries[i] for i in idx])):
                out[i] = ranked
        return [r for r in out if r is not None]

    def compute(self, s: ServedModel, queries: list[RankQuery]) -> list[RankedList]:
        started = time.perf_counter()
        pipeline = s.pipeline
        hist = Interactions.from_lists([q.history.tolist() for q in queries], pipeline.num_items)
        rows = [hist.row(i) for i in range(len(queries))]
        k = max(len(q.items) for q in queries)
        width = queries[0].dense.shape[-1]
        items = np.full((len(queries), k), -1, dtype=np.int64)
        dense = np.zeros((len(queries), k, width), dtype=np.float32)
        for i, q in enumerate(queries):
            items[i, :len(q.items)], dense[i, :len(q.items)] = q.items, q.dense
        cands = Candidates(np.arange(len(queries)), items, dense, np.zeros(items.shape, bool))
        stage: torch.Tensor | None = None
        if pipeline.stages is not None:
            padded = left_pad(rows, pipeline.ranker.config.max_len)
            codes = np.zeros(padded.shape, np.int64)
            for i, q in enumerate(queries):
                if q.user is not None:
                    codes[i] = lookup(pipeline.stages, np.array([q.user]), padded[i:i + 1])[0]
                for item, code in q.live_stages.items():  # events since training
                    codes[i] = np.where(padded[i] == item, np.maximum(codes[i], code), codes[i])
            stage = torch.from_numpy(codes)
        out = []
        for ranked in pipeline.ranked_lists(hist, cands, stage):
            has = bool(ranked) and "p_cart" in ranked[0]
            out.append(RankedList(
                s.version, np.array([r["retriever_rank"] for r in ranked], np.int64),
                np.array([r["score"] for r in ranked], np.float64), [r["reason"] for r in ranked],
                np.array([r["p_cart"] for r in ranked]) if has else None,
                np.array([r["p_purchase"] for r in ranked]) if has else None))
        self.holder.metrics.step("ranking", time.perf_counter() - started, count=len(queries))
        return out


async def retrieve_then_rank(candidates: Callable[[CandidateQuery], Awaitable[CandidateSet]],
                             rank: Callable[[RankQuery], Awaitable[RankedList]], q: CandidateQuery,
                             user: int | None, live_stages: dict[int, int]) -> tuple[CandidateSet, RankedList]:
    """The one retrieve -> rank step of a request, wherever its two halves run (one process, one
    fused replica, or two deployments): the candidates, then their ranking by the model version
    that retrieved them (``RankQuery.model_version``), so one request never mixes two versions."""
    cands = await candidates(q)
    ranked = await rank(RankQuery(q.history, cands.items, cands.dense, user, q.items_version, live_stages,
                                  model_version=cands.model_version))
    return cands, ranked
