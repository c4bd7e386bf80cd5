"""The Serve deployments that hold the models -- thin adapters placing :mod:`serving.stages` in
replicas: the retriever, the ranker (``@serve.batch``-ed), both in one (``RetrieveRank``), and the
registry of items added at runtime (the policy is :mod:`serving.policy`).

The model is the ``user_config`` of the model deployments, so a new version rolls out by
reconfiguring the running replicas (:meth:`~serving.stages.ModelHolder.load`). Items added at
runtime live in the :class:`ItemRegistry` and reach every replica through
:meth:`~serving.stages.ModelHolder.current`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading

from ray import serve
from ray.serve.handle import DeploymentHandle

from serving.messages import CandidateQuery, CandidateSet, RankedList, RankQuery
from serving.netbind import bind_replica_grpc_to_node_address
from serving.runtime_items import load_registry
from serving.schemas import AppArgs, ModelSpec
from serving.stages import ModelHolder, Ranking, Retrieval
from training import storage

log = logging.getLogger(__name__)


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
    """What every model deployment shares: the held model (its ``user_config``) and readiness."""

    with_index = False  # whether it searches the vector index (retrieval)

    def _init(self, args: AppArgs, registry: DeploymentHandle) -> None:
        bind_replica_grpc_to_node_address()

        async def since(n: int) -> list[dict]:
            return await registry.since.remote(n)

        self.holder = ModelHolder(args, since, with_index=self.with_index)

    def reconfigure(self, config: dict) -> None:
        self.holder.load(ModelSpec(**config))

    def ready(self) -> str:
        return self.holder.version()

    def check_content(self, record: dict) -> str | None:
        return self.holder.check_content(record)


class _Batched:
    """A ``@serve.batch``-ed ranker whose batch window applies only when requests queue: a request
    that arrives alone is ranked at once (``adaptive_batching``)."""

    def _init_batching(self, args: AppArgs) -> None:
        self.ranking = Ranking(self.holder)
        self.adaptive = args.adaptive_batching
        self.waiting = 0
        self._rank_batch.set_max_batch_size(args.max_batch_size)
        self._rank_batch.set_batch_wait_timeout_s(args.batch_wait_timeout_s)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _rank_batch(self, queries: list[RankQuery]) -> list[RankedList]:
        return await self.ranking.rank(queries)

    async def _rank(self, q: RankQuery) -> RankedList:
        self.waiting += 1
        try:
            # one turn of the event loop first: requests already queued on it register before the
            # decision (ranking itself never yields, so without this none would ever be seen)
            await asyncio.sleep(0)
            if self.adaptive and self.waiting == 1:  # nobody to wait for
                return (await self.ranking.rank([q]))[0]
            return await self._rank_batch(q)
        finally:
            self.waiting -= 1


@serve.deployment(max_ongoing_requests=16)
class Retriever(_ServesModel):
    """User tower + the vector index -> candidates (:class:`~serving.stages.Retrieval`)."""

    with_index = True

    def __init__(self, args: AppArgs, registry: DeploymentHandle):
        self._init(args, registry)
        self.retrieval = Retrieval(self.holder)

    async def candidates(self, q: CandidateQuery) -> CandidateSet:
        return await self.retrieval.candidates(q)

    async def similar(self, item: int, k: int, items_version: int) -> list[int]:
        return await self.retrieval.similar(item, k, items_version)


@serve.deployment(max_ongoing_requests=64)  # lets @serve.batch fill batches of 32
class Ranker(_ServesModel, _Batched):
    """The multimodal ranker over each request's candidates, batched across requests (32
    requests cost ~10x one on CPU, see BENCHMARKS.md)."""

    def __init__(self, args: AppArgs, registry: DeploymentHandle):
        self._init(args, registry)
        self._init_batching(args)

    async def rank(self, q: RankQuery) -> RankedList:
        return await self._rank(q)


@serve.deployment(max_ongoing_requests=64)
class RetrieveRank(_ServesModel, _Batched):
    """Retrieval and ranking in one replica (``topology: fused``): one model copy, one hop less."""

    with_index = True

    def __init__(self, args: AppArgs, registry: DeploymentHandle):
        self._init(args, registry)
        self.retrieval = Retrieval(self.holder)
        self._init_batching(args)

    async def retrieve_and_rank(self, q: CandidateQuery, user: int | None,
                                live_stages: dict[int, int]) -> tuple[CandidateSet, RankedList]:
        cands = await self.retrieval.candidates(q)
        ranked = await self._rank(RankQuery(q.history, cands.items, cands.dense, user, q.items_version, live_stages))
        return cands, ranked

    async def similar(self, item: int, k: int, items_version: int) -> list[int]:
        return await self.retrieval.similar(item, k, items_version)
