"""Where the Serve app keeps real-time user state (:mod:`serving.state.user_state`), and how the Ingress
reaches it.

* ``user_state="embedded"`` (default): the :class:`UserStateStore` deployment, one replica that
  owns a :class:`~serving.state.memory.MemoryUserState` journaled under ``state_dir``; Serve
  restarts it after a crash and it replays its snapshot and journal. One node's disk: for a
  multi-node cluster use Redis.
* ``user_state="redis"``: every Ingress replica talks to Redis (``redis_url``) directly.

:class:`StateAccess` gives the Ingress one async interface over both, with a time-out, so a
state backend that is down turns into a fallback (stored history, a flag in the answer), never
a 500.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict

from ray import serve
from ray.serve.handle import DeploymentHandle

from serving.core.schemas import AppArgs
from serving.core.service import user_state_config as state_config
from serving.deploy.netbind import bind_replica_grpc_to_node_address
from serving.state.memory import MemoryUserState
from serving.state.redis_backend import RedisUserState
from serving.state.user_state import Recorded, StateUnavailable, UserView


@serve.deployment(num_replicas=1, max_ongoing_requests=256)
class UserStateStore:
    """The embedded backend as a deployment (one replica: the single owner of the state)."""

    def __init__(self, args: AppArgs):
        bind_replica_grpc_to_node_address()
        self.state = MemoryUserState(state_config(args), args.state_dir)

    def view(self, key: str) -> UserView:
        return self.state.view(key)

    def issue(self, request_id: str, key: str, items: list[str]) -> None:
        self.state.issue(request_id, key, items)

    def check(self, request_id: str, item_id: str, event: str) -> Recorded:
        return self.state.check(request_id, item_id, event)

    def record(self, request_id: str, item_id: str, event: str) -> Recorded:
        return self.state.record(request_id, item_id, event)

    def ping(self) -> bool:
        return self.state.ping()

    def memory(self) -> dict:
        torn = self.state.journal.torn if self.state.journal else 0
        return {**self.state.memory(), "skipped_journal_lines": self.state.skipped, "torn_journal_lines": torn,
                "config": asdict(self.state.config)}

    def __del__(self):
        try:
            self.state.close()
        except Exception:  # noqa: BLE001 -- nothing sensible to do at interpreter teardown
            pass


class StateAccess:
    """The service's user-state port (:class:`serving.core.service.StatePort`) in the Serve app:
    ``handle`` (embedded) or a Redis client (``redis``)."""

    def __init__(self, args: AppArgs, handle: DeploymentHandle | None):
        self.timeout = args.state_timeout_s
        self.handle = handle
        self.redis = RedisUserState(state_config(args), args.redis_url, timeout_s=args.state_timeout_s,
                                    password_env=args.redis_password_env) if args.user_state == "redis" else None

    async def _call(self, name: str, *a):
        try:
            if self.redis is not None:
                return await asyncio.wait_for(asyncio.to_thread(getattr(self.redis, name), *a), self.timeout)
            return await asyncio.wait_for(getattr(self.handle, name).remote(*a), self.timeout)
        except Exception as exc:
            raise StateUnavailable(f"user state ({'redis' if self.redis else 'embedded'}): "
                                   f"{type(exc).__name__}: {exc}"[:300]) from exc

    async def view(self, key: str) -> UserView:
        return await self._call("view", key)

    async def issue(self, request_id: str, key: str, items: list[str]) -> None:
        await self._call("issue", request_id, key, items)

    async def check(self, request_id: str, item_id: str, event: str) -> Recorded:
        return await self._call("check", request_id, item_id, event)

    async def record(self, request_id: str, item_id: str, event: str) -> Recorded:
        return await self._call("record", request_id, item_id, event)

    async def ping(self) -> bool:
        try:
            return bool(await self._call("ping"))  # not memory(): that walks every key
        except StateUnavailable:
            return False
