"""The request path in one process: the ports of :class:`~serving.core.service.RecommendService`
as plain in-process objects, no Ray.

* :class:`LocalState` -- the user-state port over an in-process
  :class:`~serving.state.memory.MemoryUserState`;
* :class:`LocalRegistry` -- the runtime-item registry over an :class:`~serving.core.runtime_items.ItemStore`;
* :class:`LocalBackend` -- retrieval, ranking and the policy (:mod:`serving.core.retrieve_rank`,
  :mod:`serving.core.policy`) called directly.

Unit tests (``tests/unit/serving/core/test_service.py``) and the single-process benchmarks
(``benchmarks/plain_fastapi.py``, ``benchmarks/catalog_1m.py``) serve the same service through them;
the Serve app (:mod:`serving.deploy.app`) wires it to deployments instead.
"""

from __future__ import annotations

import asyncio

from serving.core.messages import CandidateQuery, CandidateSet, PolicyQuery, RankedList, RankQuery, Slate
from serving.core.metrics import NO_METRICS, Metrics
from serving.core.policy import PolicyCore
from serving.core.retrieve_rank import ModelHolder, Ranking, Retrieval, retrieve_then_rank
from serving.core.schemas import AppArgs, ModelSpec
from serving.state.memory import MemoryUserState
from serving.state.user_state import Recorded, UserView


class LocalState:
    """:class:`~serving.core.service.StatePort` over an in-process
    :class:`~serving.state.memory.MemoryUserState`."""

    def __init__(self, state: MemoryUserState):
        self.state = state

    async def view(self, key: str) -> UserView:
        return self.state.view(key)

    async def issue(self, request_id: str, key: str, items: list[str]) -> None:
        self.state.issue(request_id, key, items)

    async def check(self, request_id: str, item_id: str, event: str) -> Recorded:
        return self.state.check(request_id, item_id, event)

    async def record(self, request_id: str, item_id: str, event: str) -> Recorded:
        return self.state.record(request_id, item_id, event)

    async def ping(self) -> bool:
        return self.state.ping()


class LocalRegistry:
    """:class:`~serving.core.runtime_items.ItemStore` behind the async calls of
    :class:`~serving.core.service.Backend`."""

    def __init__(self, root: str):
        from serving.core.runtime_items import ItemStore

        self.store = ItemStore(root)

    async def since(self, n: int) -> list[dict]:
        return self.store.since(n)

    async def add(self, record: dict) -> int:
        return self.store.add(record)


class LocalBackend:
    """:class:`~serving.core.service.Backend` in one process: retrieval, ranking and the policy as
    plain objects; the model work runs in a worker thread (``offload``) so an event loop keeps
    serving meanwhile."""

    def __init__(self, args: AppArgs, registry: LocalRegistry | None = None, offload: bool = True,
                 served=None, metrics: Metrics = NO_METRICS):
        """``served``: a :class:`~serving.core.runtime_items.ServedModel` already loaded (else
        ``args.model_dir`` is loaded); ``metrics``: where the steps' latencies go."""
        self.registry = registry or LocalRegistry(args.items_root)
        self.holder = ModelHolder(args, self.registry.since, with_index=True, metrics=metrics)
        if served is None:
            self.holder.load(ModelSpec(model_dir=args.model_dir, model_version=args.model_version))
        else:
            self.holder.served = served
            if served.index is not None:
                metrics.index_items(len(served.index))
        self.retrieval, self.ranking = Retrieval(self.holder), Ranking(self.holder)
        self.policy = PolicyCore(args, background=False, metrics=metrics)
        self.offload = offload

    async def _run(self, fn, *a):
        return await asyncio.to_thread(fn, *a) if self.offload else fn(*a)

    async def retrieve_and_rank(self, q: CandidateQuery, user: int | None,
                                live_stages: dict[int, int]) -> tuple[CandidateSet, RankedList]:
        served = await self.holder.current(q.items_version)  # runtime items applied on the loop

        async def candidates(cq: CandidateQuery) -> CandidateSet:
            return await self._run(self.retrieval.compute, served, cq)

        async def rank(rq: RankQuery) -> RankedList:
            return (await self._run(self.ranking.compute, served, [rq]))[0]

        return await retrieve_then_rank(candidates, rank, q, user, live_stages)

    async def similar(self, item: int, k: int, items_version: int) -> list[int]:
        return await self.retrieval.similar(item, k, items_version)

    async def choose(self, q: PolicyQuery) -> Slate:
        return self.policy.choose(q)

    async def learn(self, request_id: str, item_id: str, event: str) -> bool:
        return self.policy.feedback(request_id, item_id, event)

    async def since(self, n: int) -> list[dict]:
        return await self.registry.since(n)

    async def add_item(self, record: dict) -> int:
        return await self.registry.add(record)

    async def check_content(self, record: dict) -> str | None:
        return self.holder.check_content(record)

    async def ready(self) -> str:
        return self.holder.version()
