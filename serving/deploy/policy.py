"""The Policy deployment: one replica (the bandit's state is the model) holding
:class:`~serving.core.policy.PolicyCore` -- the contextual bandit that orders the final slate, logs
exact propensities and learns from ``/feedback``, checkpointed in the background and on shutdown.
"""

from __future__ import annotations

from ray import serve

from serving.core.messages import PolicyParams, PolicyQuery, Slate
from serving.core.metrics import Metrics
from serving.core.policy import PolicyCore
from serving.core.schemas import AppArgs
from serving.deploy.netbind import bind_replica_grpc_to_node_address
from serving.deploy.ray_metrics import RaySink


@serve.deployment(num_replicas=1)
class Policy:
    def __init__(self, args: AppArgs):
        bind_replica_grpc_to_node_address()
        self.core = PolicyCore(args, metrics=Metrics(RaySink()))

    def choose(self, q: PolicyQuery) -> Slate:
        return self.core.choose(q)

    def remember(self, request_id: str, shown: dict) -> None:
        self.core.remember(request_id, shown)

    def parameters(self) -> PolicyParams:
        return self.core.parameters()

    def feedback(self, request_id: str, item_id: str, event: str) -> bool:
        return self.core.feedback(request_id, item_id, event)

    def memory(self) -> dict:
        return self.core.memory()

    def __del__(self):  # Serve calls it on graceful shutdown / redeploy
        try:
            self.core.close()
        except Exception:  # noqa: BLE001 -- nothing sensible to do at interpreter teardown
            pass
