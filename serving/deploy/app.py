"""The Raycart Serve application: the Ray-free :class:`~serving.core.service.RecommendService` placed on
Serve replicas.

The HTTP edge (:mod:`serving.edge.http`) runs in the ``Ingress`` replicas, each with its own service
object; the service reaches the stages (:mod:`serving.core.retrieve_rank`) through ``DeploymentHandle``s
(:class:`HandleBackend`): the retriever and the ranker (``@serve.batch``-ed) -- in one
``RetrieveRank`` deployment (``topology: fused``, one hop) or in two (``separate``: independent
scaling) --, the single ``Policy`` replica, the ``ItemRegistry`` of runtime items and the user
state (:mod:`serving.deploy.state_store`). ``build_app(args)`` is the entry point for ``serve run
serving.deploy.app:build_app`` / ``serve deploy cluster/serve.yaml`` and for ``raycart serve``.

Each replica records its metrics through Ray Serve's metrics (:class:`~serving.deploy.ray_metrics.RaySink`),
exported on every node's Ray metrics export port; the Ingress writes its per-request access lines
to its Serve replica log file (not the console).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
import uuid
from typing import TypeVar

from ray import serve
from ray.serve.handle import DeploymentHandle

from serving.core.catalog import Catalog
from serving.core.messages import (
    CandidateQuery,
    CandidateSet,
    DependencyUnavailable,
    ModelVersionMismatch,
    PolicyQuery,
    RankedList,
    RankQuery,
    Slate,
)
from serving.core.metrics import Metrics, route_access_log
from serving.core.policy import CopyChooser, PolicyCopy, ranker_order
from serving.core.retrieve_rank import retrieve_then_rank
from serving.core.schemas import AppArgs, ModelSpec
from serving.core.service import RecommendService, ServiceError
from serving.deploy.deployments import ItemRegistry, Ranker, Retriever, RetrieveRank
from serving.deploy.netbind import bind_replica_grpc_to_node_address
from serving.deploy.policy import Policy
from serving.deploy.ray_metrics import RaySink
from serving.deploy.retrain_trigger import RetrainTrigger
from serving.deploy.state_store import StateAccess, UserStateStore
from serving.edge.http import EdgeLog, Runtime, configure, open_feedback_log
from serving.edge.security import ApiKeys
from serving.edge.shop import Tally

log = logging.getLogger(__name__)

# separate topology during a rollout: how long a request retries until its retriever and ranker
# replicas agree on a model version (each keeps the version it replaced for ModelHolder.grace_s)
VERSION_AGREE_S = 10.0


E = TypeVar("E", bound=BaseException)


def _raised(exc: BaseException, kind: type[E]) -> E | None:
    """The ``kind`` error a replica raised: Ray delivers it as itself or as a task error whose
    cause it is; None for any other error."""
    for err in (exc, getattr(exc, "cause", None)):
        if isinstance(err, kind):
            return err
    return None


def _unavailable(exc: BaseException) -> BaseException:
    """A model replica's :class:`~serving.core.messages.DependencyUnavailable` (it could not reach the item
    registry in time) as a 503 to retry; any other error as it is."""
    cause = _raised(exc, DependencyUnavailable)
    return ServiceError(503, f"{cause}; retry") if cause is not None else exc


# per-deployment autoscaling with AppArgs.autoscaling (target ongoing requests per replica; the
# Ranker's are high so that @serve.batch fills batches before a new replica is added)
AUTOSCALING = {
    "Ingress": {"target_ongoing_requests": 8, "upscale_delay_s": 3, "downscale_delay_s": 15},
    "Retriever": {"target_ongoing_requests": 4, "upscale_delay_s": 3, "downscale_delay_s": 15},
    "Ranker": {"target_ongoing_requests": 16, "upscale_delay_s": 3, "downscale_delay_s": 15},
    "RetrieveRank": {"target_ongoing_requests": 8, "upscale_delay_s": 3, "downscale_delay_s": 15},
}


class HandleBackend:
    """:class:`serving.core.service.Backend` over the deployments' handles."""

    def __init__(self, retriever: DeploymentHandle, ranker: DeploymentHandle | None, policy: DeploymentHandle,
                 registry: DeploymentHandle, copy: CopyChooser | None = None, wait_s: float = 5.0,
                 agree_s: float = VERSION_AGREE_S):
        self.retriever, self.ranker, self.policy, self.registry = retriever, ranker, policy, registry
        self.wait_s = wait_s  # how long a request waits for a single-replica deployment (AppArgs.singleton_wait_s)
        self.agree_s = min(agree_s, VERSION_AGREE_S)  # how long retrieval and ranking may take to agree on a version
        self.copy = copy  # choose here, from a copy of the policy's parameters (AppArgs.policy_copy_s)

    async def retrieve_and_rank(self, q: CandidateQuery, user: int | None,
                                live_stages: dict[int, int]) -> tuple[CandidateSet, RankedList]:
        """Candidates and their ranking by one model version. Fused: one replica does both with
        the version it retrieved with. Separate: the ranker ranks with the version the retriever
        used, which it still holds for a while after a rollout (ModelHolder.grace_s); a ranker
        that does not hold it (a new replica that came up first) says which it holds, and the
        candidates are retrieved again with that one -- until a pair agrees, or 503."""
        if self.ranker is None:  # fused: one hop
            try:
                return await self.retriever.retrieve_and_rank.remote(q, user, live_stages)
            except Exception as exc:  # noqa: BLE001 -- re-raised (a 503 where it says retry)
                raise _unavailable(exc) from None
        retriever, ranker = self.retriever, self.ranker

        async def candidates(cq: CandidateQuery) -> CandidateSet:
            return await retriever.candidates.remote(cq)

        async def rank(rq: RankQuery) -> RankedList:
            return await ranker.rank.remote(rq)

        deadline = time.monotonic() + self.agree_s
        for attempt in itertools.count():
            try:
                return await retrieve_then_rank(candidates, rank, q, user, live_stages)
            except Exception as exc:  # noqa: BLE001 -- re-raised unless a version mismatch
                mismatch = _raised(exc, ModelVersionMismatch)
                if mismatch is None:
                    raise _unavailable(exc) from None
                if time.monotonic() >= deadline:
                    raise ServiceError(503, f"a model rollout is under way ({mismatch}); retry") from None
                q = dataclasses.replace(q, model_version=mismatch.held[0])
                await asyncio.sleep(min(0.02 * 2 ** attempt, 0.5))
        raise AssertionError("unreachable")

    async def similar(self, item: int, k: int, items_version: int) -> list[int]:
        return await self.retriever.similar.remote(item, k, items_version)

    async def choose(self, q: PolicyQuery) -> Slate:
        if self.copy is None:
            try:  # the single Policy replica; while it restarts (a rollout), the ranker's order
                return await asyncio.wait_for(self.policy.choose.remote(q), self.wait_s)
            except Exception as exc:  # noqa: BLE001 -- any failure to reach it: answer without it
                log.warning("policy unavailable (%s): answering in the ranker's order", str(exc)[:200] or
                            type(exc).__name__)
                return ranker_order(q)
        return await self.copy.choose(q)

    async def learn(self, request_id: str, item_id: str, event: str) -> bool:
        try:  # the event is in the feedback log already: a policy that is restarting just misses it
            return await asyncio.wait_for(self.policy.feedback.remote(request_id, item_id, event), self.wait_s)
        except Exception as exc:  # noqa: BLE001
            log.warning("policy did not learn from feedback (%s)", str(exc)[:200] or type(exc).__name__)
            return False

    async def since(self, n: int) -> list[dict]:
        try:
            return await asyncio.wait_for(self.registry.since.remote(n), self.wait_s)
        except Exception as exc:  # noqa: BLE001
            raise ServiceError(503, f"the item registry did not answer ({type(exc).__name__}); retry") from None

    async def add_item(self, record: dict) -> int:
        return await self.registry.add.remote(record)

    async def check_content(self, record: dict) -> str | None:
        return await self.retriever.check_content.remote(record)

    async def ready(self) -> str:
        """The served model version (the ranker's: what the answers report); both stages loaded."""
        version = await self.retriever.ready.remote()
        return await self.ranker.ready.remote() if self.ranker is not None else version


@serve.deployment(max_ongoing_requests=64)  # async: waits on the other deployments, not the CPU
@serve.ingress()  # the app comes from __serve_build_asgi_app__, on the replica
class Ingress:
    def __init__(self, retriever: DeploymentHandle, ranker: DeploymentHandle | None, policy: DeploymentHandle,
                 registry: DeploymentHandle, state: DeploymentHandle | None, args: AppArgs,
                 retrain: DeploymentHandle | None = None):
        bind_replica_grpc_to_node_address()
        # a key file that is missing, bad or empty (an empty Secret) stops the replica here, with
        # the file's name, instead of serving without keys
        ApiKeys.load(args.api_keys_file)
        self.args = args
        self.retrain = retrain  # the schedule (serving.deploy.retrain_trigger), if on
        try:
            writer = serve.get_replica_context().replica_id.unique_id
        except Exception:  # noqa: BLE001 -- outside a replica (local testing mode)
            writer = uuid.uuid4().hex[:12]
        self.edge = EdgeLog(open_feedback_log(args, f"ingress-{writer}"))
        metrics = Metrics(Tally(RaySink()))  # Tally: the shop page's live panel (this replica's counts)
        route_access_log(logging.getLogger("ray.serve"))  # the replica's log file
        copy = CopyChooser(PolicyCopy(args, metrics=metrics), policy.parameters.remote, policy.remember.remote,
                           args.singleton_wait_s) if args.policy_copy_s > 0 else None
        self.runtime = Runtime(RecommendService(args, Catalog.load(args.data_dir),
                                                # a rollout's 503 comes before the Guard's 504
                                                HandleBackend(retriever, ranker, policy, registry, copy,
                                                             args.singleton_wait_s, args.request_timeout_s / 2),
                                                StateAccess(args, state), self.edge.append, metrics), self.edge)

    def __serve_build_asgi_app__(self):
        """The HTTP edge, configured for this replica (called by Serve after ``__init__``, in the
        replica: the module's own ``api``, not a copy shipped with the class)."""
        return configure(self.runtime, self.args)

    def check_health(self) -> None:
        """Serve's health check: a replica that cannot write its WAL for a while is replaced."""
        problem = self.edge.unhealthy()
        if problem:
            raise RuntimeError(problem)

    def __del__(self):
        try:
            self.edge.close()
        except Exception:  # noqa: BLE001
            pass


def build_app(args: dict | AppArgs) -> serve.Application:
    """The application graph; ``args`` as in :class:`serving.core.schemas.AppArgs`."""
    a = args if isinstance(args, AppArgs) else AppArgs(**args)
    cpus = {"ray_actor_options": {"num_cpus": a.replica_cpus}}

    def scaled(name: str) -> dict:
        """The stateless deployments: rolled out by surging (AppArgs.rollout_surge_percent: new
        replicas start and become ready before old ones stop, so no deployment goes to zero
        replicas mid-rollout), autoscaled when asked. A stopping Ingress replica drains its
        requests for as long as one may take (request_timeout_s) before it is killed."""
        out: dict = {**cpus, "max_surge_percent": a.rollout_surge_percent}
        if name == "Ingress":
            out["graceful_shutdown_timeout_s"] = a.request_timeout_s + 5
        if a.autoscaling:
            out["autoscaling_config"] = {"min_replicas": 1, "max_replicas": a.max_replicas, **AUTOSCALING[name]}
        return out

    # the model is the Retriever's and Ranker's user_config, not a constructor argument: a new
    # model_dir / model_version then reconfigures the running replicas instead of replacing them.
    # The single-replica deployments (registry, user state, policy: one writer each) restart
    # in place; the Ingress waits for them at most singleton_wait_s (state_timeout_s for the user
    # state) and answers without them meanwhile.
    # (type: ignore[attr-defined] below: @serve.deployment adds .options, which its typing does not show)
    model = {"user_config": ModelSpec(model_dir=a.model_dir, model_version=a.model_version).model_dump()}
    fixed = a.model_copy(update={"model_dir": "(user_config)", "model_version": "(user_config)"})
    registry = ItemRegistry.options(**cpus).bind(fixed)  # type: ignore[attr-defined]
    state = UserStateStore.options(**cpus).bind(fixed) if a.user_state == "embedded" else None  # type: ignore[attr-defined]
    if a.topology == "fused":
        retriever, ranker = RetrieveRank.options(**scaled("RetrieveRank"), **model).bind(fixed, registry), None  # type: ignore[attr-defined]
    else:
        retriever = Retriever.options(**scaled("Retriever"), **model).bind(fixed, registry)  # type: ignore[attr-defined]
        ranker = Ranker.options(**scaled("Ranker"), **model).bind(fixed, registry)  # type: ignore[attr-defined]
    retrain = None
    if a.retrain_every_events is not None or a.retrain_every_minutes is not None:
        retrain = RetrainTrigger.options(ray_actor_options={"num_cpus": 0}).bind(a)  # type: ignore[attr-defined]
    return Ingress.options(**scaled("Ingress")).bind(retriever, ranker, Policy.options(**cpus).bind(fixed), registry,  # type: ignore[attr-defined]
                                                     state, fixed, retrain)
