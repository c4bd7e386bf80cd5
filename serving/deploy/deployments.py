"""The Serve deployments that hold the models -- thin adapters placing :mod:`serving.core.retrieve_rank` in
replicas: the retriever, the ranker (``@serve.batch``-ed), both in one (``RetrieveRank``), and the
registry of items added at runtime (the policy is :mod:`serving.deploy.policy`).

The model is the ``user_config`` of the model deployments, so a new version rolls out by
reconfiguring the running replicas (:meth:`~serving.core.retrieve_rank.ModelHolder.load`). Items added at
runtime live in the :class:`ItemRegistry` and reach every replica through
:meth:`~serving.core.retrieve_rank.ModelHolder.current`.
"""

from __future__ import annotations

import asyncio

from ray import serve
from ray.serve.handle import DeploymentHandle

from serving.core.messages import (
    CandidateQuery,
    CandidateSet,
    DependencyUnavailable,
    ModelVersionMismatch,
    RankedList,
    RankQuery,
)
from serving.core.metrics import Metrics
from serving.core.retrieve_rank import ModelHolder, Ranking, Retrieval, retrieve_then_rank
from serving.core.runtime_items import ItemStore
from serving.core.schemas import AppArgs, ModelSpec
from serving.deploy.netbind import bind_replica_grpc_to_node_address
from serving.deploy.ray_metrics import RaySink


@serve.deployment(num_replicas=1)
class ItemRegistry:
    """The single writer of the items added at runtime (:class:`~serving.core.runtime_items.ItemStore`):
    one replica; every other replica pulls what it has not applied yet (:meth:`since`)."""

    def __init__(self, args: AppArgs):
        bind_replica_grpc_to_node_address()
        self.store = ItemStore(args.items_root)

    def add(self, record: dict) -> int:
        return self.store.add(record)

    def since(self, n: int) -> list[dict]:
        return self.store.since(n)


class _ServesModel:
    """What every model deployment shares: the held model (its ``user_config``) and readiness."""

    with_index = False  # whether it searches the vector index (retrieval)

    def _init(self, args: AppArgs, registry: DeploymentHandle) -> None:
        bind_replica_grpc_to_node_address()

        async def since(n: int) -> list[dict]:
            try:  # the single registry replica may be restarting: bounded, then a 503 to retry
                return await asyncio.wait_for(registry.since.remote(n), args.singleton_wait_s)
            except Exception as exc:  # noqa: BLE001 -- any failure to reach it: retry later
                raise DependencyUnavailable(f"the item registry did not answer ({type(exc).__name__})") from None

        self.holder = ModelHolder(args, since, with_index=self.with_index, metrics=Metrics(RaySink()))

    async def reconfigure(self, config: dict) -> None:
        """A new model version (the ``user_config``): built in a worker thread while the current
        one keeps answering, the registry's runtime items applied, then swapped in. A new replica
        takes traffic only after this returns, so its first requests wait for nothing."""
        self.holder.install(await asyncio.to_thread(self.holder.build, ModelSpec(**config)))
        await self.holder.catch_up()

    def ready(self) -> str:
        return self.holder.version()

    def check_content(self, record: dict) -> str | None:
        return self.holder.check_content(record)


class _Batched:
    """A ``@serve.batch``-ed ranker whose batch window applies only when requests queue: a request
    that arrives alone is ranked at once (``adaptive_batching``)."""

    holder: ModelHolder  # set by the deployment that mixes this in

    def _init_batching(self, args: AppArgs) -> None:
        self.ranking = Ranking(self.holder)
        self.adaptive = args.adaptive_batching
        self.waiting = 0
        # @serve.batch adds these setters at runtime; its typing does not show them
        self._rank_batch.set_max_batch_size(args.max_batch_size)  # type: ignore[attr-defined]
        self._rank_batch.set_batch_wait_timeout_s(args.batch_wait_timeout_s)  # type: ignore[attr-defined]

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _rank_batch(self, queries: list[RankQuery]) -> list[RankedList | ModelVersionMismatch]:
        return await self.ranking.rank(queries)

    async def _rank(self, q: RankQuery) -> RankedList:
        """``q`` ranked by the model version that retrieved its candidates, or a
        :class:`~serving.core.messages.ModelVersionMismatch` raised when this replica does not hold it."""
        self.waiting += 1
        try:
            # one turn of the event loop first: requests already queued on it register before the
            # decision (ranking itself never yields, so without this none would ever be seen)
            await asyncio.sleep(0)
            if self.adaptive and self.waiting == 1:  # nobody to wait for
                ranked = (await self.ranking.rank([q]))[0]
            else:
                ranked = await self._rank_batch(q)
        finally:
            self.waiting -= 1
        if isinstance(ranked, ModelVersionMismatch):
            raise ranked
        return ranked


class _Retrieves:
    """What the retrieving deployments share: candidates and similar items from the held model."""

    retrieval: Retrieval  # set by the deployment that mixes this in

    async def candidates(self, q: CandidateQuery) -> CandidateSet:
        return await self.retrieval.candidates(q)

    async def similar(self, item: int, k: int, items_version: int) -> list[int]:
        return await self.retrieval.similar(item, k, items_version)


@serve.deployment(max_ongoing_requests=16)
class Retriever(_ServesModel, _Retrieves):
    """User tower + the vector index -> candidates (:class:`~serving.core.retrieve_rank.Retrieval`)."""

    with_index = True

    def __init__(self, args: AppArgs, registry: DeploymentHandle):
        self._init(args, registry)
        self.retrieval = Retrieval(self.holder)


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
class RetrieveRank(_ServesModel, _Batched, _Retrieves):
    """Retrieval and ranking in one replica (``topology: fused``): one model copy, one hop less."""

    with_index = True

    def __init__(self, args: AppArgs, registry: DeploymentHandle):
        self._init(args, registry)
        self.retrieval = Retrieval(self.holder)
        self._init_batching(args)

    async def retrieve_and_rank(self, q: CandidateQuery, user: int | None,
                                live_stages: dict[int, int]) -> tuple[CandidateSet, RankedList]:
        return await retrieve_then_rank(self.retrieval.candidates, self._rank, q, user, live_stages)
