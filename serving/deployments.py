"""The Serve deployments behind the ingress that hold the models: retriever and ranker (batched),
and the registry of items added at runtime (the policy is :mod:`serving.policy`).

The Retriever and Ranker load what they serve from the directories training exports (a ranker
directory embeds its retriever); the model is their ``user_config``, so a new version rolls out
by reconfiguring the running replicas. Items added at runtime live in the :class:`ItemRegistry`
and reach every replica through :meth:`_ServesModel._sync`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading

import numpy as np
import torch
from ray import serve
from ray.serve.handle import DeploymentHandle

from serving.images import ImageRefused, ImageSource
from serving.index import VectorIndex
from serving.netbind import bind_replica_grpc_to_node_address
from serving.runtime_items import ServedModel, load_registry
from serving.schemas import AppArgs, ModelSpec, PolicyInputs
from training import storage
from training.candidates import Candidates
from training.data.funnel import lookup
from training.data.interactions import Interactions
from training.models.bandit import user_item_features
from training.models.retriever import left_pad
from training.new_items import rows_table

log = logging.getLogger(__name__)


def _history(items: list[int], times: list[int] | None, num_items: int, default_us: int = 0) -> Interactions:
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


@serve.deployment(num_replicas=1)
class ItemRegistry:
    """The items added at runtime, in order (item ``n`` gets internal id ``catalogue size + n``),
    each stored under ``items_root`` -- with its position, so ids are stable across restarts --
    before it is acknowledged, and replayed on start. One replica and one lock: it is the single
    writer; every other replica pulls what it has not applied yet (:meth:`since`).

    On start a position whose file is missing or unreadable, or a second record of an id, becomes
    a **quarantined** placeholder: it keeps its position (no later id shifts), is never
    recommended, and is logged -- it never blocks the other items or the app."""

    def __init__(self, args: AppArgs):
        bind_replica_grpc_to_node_address()
        self.lock = threading.Lock()  # Serve runs sync methods in a thread pool
        self.fs, self.root = storage.resolve(args.items_root)
        self.fs.create_dir(self.root, recursive=True)
        self.records, problems = load_registry(self.fs, self.root)
        for problem in problems:
            log.warning("item registry: %s", problem)
        self.ids = {r["item_id"] for r in self.records if not r.get("quarantined")}

    def add(self, record: dict) -> int:
        """Store ``record``; its position, or -1 when the id was already added."""
        with self.lock:
            if record["item_id"] in self.ids:
                return -1
            n = len(self.records)
            stored = {**record, "position": n}
            path = f"{self.root}/item-{n:09d}.json"
            storage.write_durably(self.fs, path + ".tmp", path, json.dumps(stored).encode())
            self.records.append(stored)
            self.ids.add(record["item_id"])
            return n

    def since(self, n: int) -> list[dict]:
        with self.lock:
            return self.records[n:]


class _ServesModel:
    """Reconfigurable model + runtime items for the Retriever and the Ranker. The model is the
    ``user_config`` (:class:`~serving.schemas.ModelSpec`): a new version is loaded next to the old
    one and swapped in once ready, so requests keep being answered during a rollout."""

    with_index = False

    def _init(self, args: AppArgs, registry: DeploymentHandle) -> None:
        bind_replica_grpc_to_node_address()
        self.images = ImageSource(args.image_root, args.image_max_bytes, args.image_max_pixels)
        self.registry = registry
        self.served: ServedModel | None = None
        self.lock = asyncio.Lock()

    def reconfigure(self, config: dict) -> None:
        served = ServedModel(ModelSpec(**config), self.images)
        if self.with_index:
            served.index = VectorIndex(served.pipe.stage.retriever.item_vecs.numpy())
        self.served = served  # runtime items are re-applied lazily (_sync), with this model's towers

    async def _sync(self, items_version: int) -> ServedModel:
        """The current model with at least ``items_version`` runtime items applied."""
        served = self.served
        if served.applied < items_version:
            async with self.lock:
                if served.applied < items_version:
                    served.apply(await self.registry.since.remote(served.applied))
        return served

    def ready(self) -> str:
        return self.served.version

    def check_content(self, record: dict) -> str | None:
        """Why this model could not place a new item, or None. The item is embedded here (its
        image read through the capped, rooted reader), before anything is stored, so an item the
        replicas could not embed is never stored; its image stays a key under the image root."""
        enc = self.served.encoder
        try:
            if record.get("image") and not enc.uses_image:
                self.images.read(record["image"])  # checked all the same: the next model may read it
            if not enc.usable(rows_table([record])):
                return ("the item has no content this model reads: give attributes it was trained on"
                        + (", a title/description" if enc.uses_text else "")
                        + (", an image" if enc.uses_image else ""))
            self.served.embed([record])
        except ImageRefused as exc:
            return str(exc)
        except Exception as exc:  # noqa: BLE001 -- an encoder failure on this content
            return f"the item's content could not be embedded ({type(exc).__name__})"
        return None


@serve.deployment(max_ongoing_requests=16)
class Retriever(_ServesModel):
    """User tower + the FAISS index over the item-embedding table (:mod:`serving.index`) -> the
    top ``eval_candidates`` unseen items with the ranker's dense features."""

    with_index = True

    def __init__(self, args: AppArgs, registry: DeploymentHandle):
        self._init(args, registry)
        self.rng = np.random.default_rng()  # exploration candidates: independent per replica

    async def candidates(self, history: list[int], times: list[int] | None = None, items_version: int = 0,
                         live: PolicyInputs | None = None) -> dict:
        """The top ``pipe.k`` unseen items, plus ``live.explore`` exploration candidates (a random
        sample of the rest of the catalogue thinned by :func:`spread`), with the ranker's dense
        features, the item vectors and the policy's per-item columns (``policy``,
        :func:`~training.models.bandit.user_item_features`).

        ``times`` (microseconds) date the history for the recent-popularity feature: -1 (items
        engaged with since training, a session's items) means "now": the end of the training
        data or the last dated item; without ``times`` everything is dated at the end."""
        s = await self._sync(items_version)
        pipe = s.pipe
        live = live or PolicyInputs()
        if times is not None:
            t = np.asarray(times, dtype=np.int64)
            now = max(pipe.stage.end_us, int(t.max(initial=0)))
            times = np.where(t < 0, now, t).tolist()
        hist = _history(history, times, pipe.num_items, pipe.stage.end_us)
        user = pipe.stage.retriever.user_vectors(hist).numpy()
        never = np.fromiter(s.quarantined, np.int64, len(s.quarantined))
        items, scores = s.index.search(user, pipe.k, [np.r_[hist.row(0), never]])
        vecs = pipe.stage.retriever.item_vecs.numpy()
        retrieved = items[0][items[0] >= 0]
        if live.explore:
            taken = np.zeros(len(vecs), dtype=bool)
            taken[never] = True
            taken[hist.row(0)] = True
            taken[retrieved] = True
            pool = np.flatnonzero(~taken)
            pool = self.rng.choice(pool, min(10 * live.explore, len(pool)), replace=False) if len(pool) else pool
            extra = spread(vecs, pool, np.r_[hist.row(0)[-20:], live.shown].astype(np.int64), live.explore)
            items = np.r_[retrieved, extra][None, :].astype(np.int64)
            scores = (vecs[items[0]] @ user[0])[None, :]
        c = pipe.stage.from_search(hist, items, scores)
        found = c.items[0]
        safe = np.maximum(found, 0)
        policy = user_item_features(user[0], vecs[safe], vecs[live.recent] if live.recent else None, live.dim,
                                    vecs[live.shown] if live.shown else None, np.asarray(live.clicked, bool),
                                    bandwidth=live.bandwidth)
        # candidates from ``explore_from`` on are the exploration draws
        return {"items": found, "dense": c.dense[0], "policy": policy, "vectors": vecs[safe],
                "explore_from": len(retrieved) if live.explore else len(found)}


@serve.deployment(max_ongoing_requests=64)  # lets @serve.batch fill batches of 32
class Ranker(_ServesModel):
    """The multimodal ranker over each request's candidates, ``@serve.batch``-ed across requests
    (32 requests cost ~10x one on CPU, see BENCHMARKS.md)."""

    def __init__(self, args: AppArgs, registry: DeploymentHandle):
        self._init(args, registry)
        self.rank.set_max_batch_size(args.max_batch_size)
        self.rank.set_batch_wait_timeout_s(args.batch_wait_timeout_s)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def rank(self, requests: list[dict]) -> list[dict]:
        """Each request: ``history`` (item ids), ``user`` (internal id or None), ``items``/``dense``
        (its candidates), ``items_version``, optionally ``live_stages`` (item -> funnel stage code
        of the events since training). Returns ``{"model_version", "ranked"}`` per request:
        its candidates, best first, with reasons."""
        s = await self._sync(max(r.get("items_version", 0) for r in requests))
        pipe = s.pipe
        hist = Interactions.from_lists([r["history"] for r in requests], pipe.num_items)
        rows = [hist.row(i) for i in range(len(requests))]
        k = max(len(r["items"]) for r in requests)
        items = np.full((len(requests), k), -1, dtype=np.int64)
        dense = np.zeros((len(requests), k, requests[0]["dense"].shape[-1]), dtype=np.float32)
        for i, r in enumerate(requests):
            items[i, :len(r["items"])], dense[i, :len(r["items"])] = r["items"], r["dense"]
        cands = Candidates(np.arange(len(requests)), items, dense, np.zeros(items.shape, bool))
        stage = None
        if pipe.stages is not None:
            padded = left_pad(rows, pipe.ranker.config.max_len)
            stage = np.zeros(padded.shape, np.int64)
            for i, r in enumerate(requests):
                if r.get("user") is not None:
                    stage[i] = lookup(pipe.stages, np.array([r["user"]]), padded[i:i + 1])[0]
                for item, code in (r.get("live_stages") or {}).items():  # events since training
                    stage[i] = np.where(padded[i] == item, np.maximum(stage[i], code), stage[i])
            stage = torch.from_numpy(stage)
        return [{"model_version": s.version, "ranked": ranked} for ranked in pipe.ranked_lists(hist, cands, stage)]
