"""The policy of the serving path, in plain Python (no Ray): the contextual bandit that orders the
final slate, logs exact propensities and learns from feedback.

* :class:`PolicyCore` -- the learner, one per app (its state is the model); the Ray deployment
  that hosts it is :class:`serving.deploy.policy.Policy`, a thin shell around it.
* :class:`PolicyCopy` -- a copy of the learner's parameters in each Ingress replica
  (``AppArgs.policy_copy_s``), so a choice needs no call to the learner.
* :func:`ranker_order` -- the answer while the policy is unreachable (``policy_version:
  ranker-order``).

The algorithm itself (LinUCB with epsilon exploration, slate propensities) is
:mod:`training.models.bandit`, Ray-free model code that training and off-policy evaluation share;
its settings are the ``policy_*`` fields of :class:`~serving.core.schemas.AppArgs`
(:func:`policy_config`).
"""


from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable

import numpy as np

from serving.core.messages import (
    PolicyParams,
    PolicyQuery,
    Slate,
    SlotChoice,
)
from serving.core.metrics import NO_METRICS, Metrics
from serving.core.schemas import AppArgs
from training.common import storage
from training.models.bandit import (
    POLICY_COLUMNS,
    LinUCBPolicy,
    PolicyConfig,
)

log = logging.getLogger(__name__)

Since = Callable[[int], Awaitable[list[dict]]]  # runtime item records from position n on
# how long a replica keeps the model version a rollout replaced: a request whose candidates the
# old version retrieved is still ranked by it (a request takes well under a second; the margin
# covers a slow replica and the other stage's rollout)
ROLLOUT_GRACE_S = 120.0


def policy_config(args: AppArgs) -> PolicyConfig:
    return PolicyConfig(epsilon=args.policy_epsilon, alpha=args.policy_alpha, seed=args.policy_seed,
                        item_features=POLICY_COLUMNS + args.policy_item_dim, diversity=args.policy_diversity,
                        prior_item=tuple(args.policy_prior_item), prior_score=args.policy_prior_score,
                        ridge=args.policy_ridge)


class PolicyCore:
    """The contextual bandit (:mod:`training.models.bandit`) that orders the final slate, logs
    exact propensities and learns from feedback; its state is the model, so one copy serves.

    It keeps, for each of the last ``policy_pending`` requests, the feature rows of the items it
    showed (float32 copies, ``k x dim`` each), so feedback can update with exactly what the policy
    saw; older requests' feedback is still logged, not learned from. Memory is therefore bounded
    by ``policy_pending * k * dim * 4`` bytes (:meth:`memory`). With ``background`` a thread
    checkpoints (at most every ``checkpoint_interval_s``, only when it changed: never on the
    request path, however slow the store); :meth:`close` writes a last one. Restored on start."""

    def __init__(self, args: AppArgs, background: bool = True, metrics: Metrics = NO_METRICS):
        self.args, self.metrics = args, metrics
        self.config = policy_config(args)
        self.fs, self.state_path = storage.resolve(args.policy_state)
        self.fs.create_dir(self.state_path.rsplit("/", 1)[0], recursive=True)
        self.policy = self._restore()
        self.shown: collections.OrderedDict[str, dict[str, np.ndarray]] = collections.OrderedDict()
        self.early: collections.OrderedDict[str, list[tuple[str, str]]] = collections.OrderedDict()
        self.changed = 0  # updates since the last checkpoint
        self.lock = threading.RLock()  # one request at a time changes the state
        self.write_lock = threading.Lock()  # one checkpoint write at a time
        self.stop = threading.Event()
        if background:
            threading.Thread(target=self._save_loop, name="policy-checkpoint", daemon=True).start()

    def _restore(self) -> LinUCBPolicy:
        """The checkpointed policy; a checkpoint of another configuration (other features, say,
        after an upgrade) cannot be reused: it is moved aside, loudly, and learning starts afresh
        -- rather than a replica that fails to start, again and again."""
        fresh = LinUCBPolicy(self.config, np.random.default_rng(self.args.policy_seed))
        if not storage.exists(self.args.policy_state):
            return fresh
        try:
            return LinUCBPolicy.from_bytes(storage.read_bytes(self.args.policy_state), self.config)
        except ValueError as exc:
            aside = f"{self.state_path}.incompatible-{int(time.time())}"
            self.fs.move(self.state_path, aside)
            log.warning("policy checkpoint %s does not fit this configuration (%s); moved to %s, starting "
                        "a fresh policy", self.args.policy_state, str(exc)[:300], aside)
            return fresh

    def version(self) -> str:
        learning = "" if self.args.policy_learning else "-frozen"
        return f"linucb-eps{self.config.epsilon}{learning}-u{self.policy.updates}"

    def choose(self, q: PolicyQuery) -> Slate:
        """The slate (see :meth:`~training.models.bandit.LinUCBPolicy.choose`) and the policy
        version that chose it."""
        started = time.perf_counter()
        with self.lock:
            slate, shown = choose_slate(self.policy, q, self.version())
            self._remember(q.request_id, shown)
        self.metrics.step("policy_choose", time.perf_counter() - started)
        return slate

    def remember(self, request_id: str, shown: dict[str, np.ndarray]) -> None:
        """An impression chosen elsewhere (a :class:`PolicyCopy` in an Ingress replica): learn
        from it and keep its features for the request's feedback, as :meth:`choose` does."""
        with self.lock:
            self._remember(request_id, shown)

    def _remember(self, request_id: str, shown: dict[str, np.ndarray]) -> None:
        if not self.args.policy_learning:
            return
        for features in shown.values():
            self.policy.update(features, 0.0)
        self.shown[request_id] = shown
        while len(self.shown) > self.args.policy_pending:  # older feedback is only logged
            self.shown.popitem(last=False)
        self.changed += len(shown)
        for item_id, event in self.early.pop(request_id, []):  # feedback that overtook the impression
            if item_id in shown:
                self.policy.observe_feedback(shown[item_id], event)
                self.changed += 1

    def parameters(self) -> PolicyParams:
        """What a :class:`PolicyCopy` chooses with, and the version it logs."""
        with self.lock:
            inverse, theta = self.policy.solution()
            return PolicyParams(self.version(), inverse, theta)

    def feedback(self, request_id: str, item_id: str, event: str) -> bool:
        """Learn from one event; False when the (request, item) pair is not pending here. With
        policy copies an impression reaches this replica just after its answer, so an event for a
        request not seen yet is parked (the last ``policy_pending`` such requests) and learned
        when its impression arrives (:meth:`remember`)."""
        with self.lock:
            features = self.shown.get(request_id, {}).get(item_id)
            if features is None:
                if self.args.policy_copy_s > 0 and self.args.policy_learning and request_id not in self.shown:
                    self.early.setdefault(request_id, []).append((item_id, event))
                    while len(self.early) > self.args.policy_pending:
                        self.early.popitem(last=False)
                return False
            self.policy.observe_feedback(features, event)
            self.changed += 1
        return True

    def memory(self) -> dict:
        """What bounds memory: pending requests and the bytes of their features."""
        with self.lock:
            rows = sum(len(v) for v in self.shown.values())
            return {"pending_requests": len(self.shown), "feature_rows": rows,
                    "feature_bytes": sum(f.nbytes for v in self.shown.values() for f in v.values()),
                    "bound_requests": self.args.policy_pending, "dim": self.config.dim}

    def _save_loop(self) -> None:
        """Coalesced background checkpoints; a failed write is retried at the next tick."""
        while not self.stop.wait(self.args.checkpoint_interval_s):
            try:
                self.checkpoint(only_if_changed=True)
            except Exception as exc:  # noqa: BLE001 -- the store may be down; learning goes on
                log.warning("policy checkpoint to %s failed (%s); retrying in %.0f s", self.args.policy_state,
                            str(exc)[:200], self.args.checkpoint_interval_s)

    def checkpoint(self, only_if_changed: bool = False) -> bool:
        """Write the state (a snapshot taken under the lock, written outside it); whether it wrote."""
        with self.write_lock:
            with self.lock:
                if only_if_changed and not self.changed:
                    return False
                data, changed = self.policy.state_bytes(), self.changed
            # a private temporary name: during a rolling update the old and the new replica both write
            tmp = f"{self.state_path}.tmp-{os.getpid()}-{threading.get_ident()}"
            storage.write_durably(self.fs, tmp, self.state_path, data)
            with self.lock:
                self.changed -= changed
            return True

    def close(self) -> None:
        self.stop.set()
        self.checkpoint(only_if_changed=True)


FALLBACK_POLICY = "ranker-order"  # the policy_version of answers given while the policy was unreachable


def ranker_order(q: PolicyQuery) -> Slate:
    """The slate without the policy: the first ``k`` candidates in the ranker's order, each
    chosen with certainty (propensity 1, greedy) -- what the Ingress answers while the single
    Policy replica restarts. Its ``policy_version`` says so in the answer and the log."""
    n = min(q.k, len(q.item_ids))
    return Slate(FALLBACK_POLICY, [SlotChoice(j, j, 1.0, True) for j in range(n)])


def choose_slate(policy: LinUCBPolicy, q: PolicyQuery, version: str) -> tuple[Slate, dict[str, np.ndarray]]:
    """``policy``'s slate for ``q`` (see :meth:`~training.models.bandit.LinUCBPolicy.choose`),
    labelled ``version``, and the feature rows of what it shows, by item id (what learning from
    the request's feedback needs)."""
    shown = policy.choose(q.items(), q.context, q.k, q.features, q.vectors, q.epsilon, q.explore_pool, q.diversity)
    return (Slate(version, [SlotChoice(s.index, s.position, s.propensity, s.greedy) for s in shown]),
            {q.item_ids[s.index]: s.features for s in shown})


class PolicyCopy:
    """The policy's choice from a copy of its parameters (``AppArgs.policy_copy_s`` > 0): an
    Ingress replica chooses without a round trip to the single Policy replica, which keeps
    learning and is told of each impression afterwards (:meth:`PolicyCore.remember`).

    Staleness: the copy is due for a refresh once it is ``policy_copy_s`` old (:meth:`stale`),
    and the new one arrives one fetch later; feedback between refreshes changes the next copy,
    not this one. The logged propensities stay exact: they are computed from the very parameters
    that chose (whose version is logged), with this copy's own random draws."""

    def __init__(self, args: AppArgs, rng: np.random.Generator | None = None, metrics: Metrics = NO_METRICS):
        self.policy = LinUCBPolicy(policy_config(args), rng or np.random.default_rng())
        self.metrics = metrics
        self.max_age_s = args.policy_copy_s
        self.params: PolicyParams | None = None
        self.fetched_at = -float("inf")  # time.monotonic() when the installed copy was asked for

    def install(self, params: PolicyParams, fetched_at: float) -> None:
        self.policy.use_solution(params.inverse, params.theta)
        self.params, self.fetched_at = params, fetched_at

    def stale(self) -> bool:
        return time.monotonic() - self.fetched_at > self.max_age_s

    def choose(self, q: PolicyQuery) -> tuple[Slate, dict[str, np.ndarray]]:
        """The slate and the features of what it shows (for :meth:`PolicyCore.remember`)."""
        if self.params is None:
            raise RuntimeError("no policy parameters installed yet")
        started = time.perf_counter()
        chosen = choose_slate(self.policy, q, self.params.version)
        self.metrics.step("policy_choose", time.perf_counter() - started)
        return chosen


MAX_PENDING_IMPRESSIONS = 256  # impressions on their way to the learner before requests wait for it
COPY_FETCH_TIMEOUT_S = 5.0


class CopyChooser:
    """Choices from a :class:`PolicyCopy` in a replica that is not the learner (the Ingress), and
    the coordination around it, without Ray:

    * **one refresh at a time**: a stale copy starts one fetch of the learner's parameters
      (``fetch``), shared by every request that needs it; until the first copy arrives requests
      wait for it (and fail if none comes); later ones choose from the stale copy meanwhile;
    * **backpressure**: each choice's impression is handed back to the learner (``remember``) in the
      background; with ``max_pending`` of them still on their way, a request waits for its own (at
      most ``wait_s``) instead of queueing more. A lost impression is logged, never raised: it is in
      the feedback log all the same.

    ``fetch`` and ``remember`` return awaitables (Serve's ``DeploymentResponse`` in the app; plain
    coroutines in the tests)."""

    def __init__(self, copy: PolicyCopy, fetch: Callable[[], Awaitable[PolicyParams]],
                 remember: Callable[[str, dict[str, np.ndarray]], Awaitable[object]], wait_s: float = 5.0,
                 max_pending: int = MAX_PENDING_IMPRESSIONS, fetch_timeout_s: float = COPY_FETCH_TIMEOUT_S):
        self.copy, self.fetch, self.remember = copy, fetch, remember
        self.wait_s, self.max_pending, self.fetch_timeout_s = wait_s, max_pending, fetch_timeout_s
        self.refreshing: asyncio.Task | None = None
        self.background: set[asyncio.Task] = set()  # impressions on their way to the learner

    async def choose(self, q: PolicyQuery) -> Slate:
        if self.copy.stale() and self.refreshing is None:  # one fetch at a time, shared by whoever waits for it
            self.refreshing = asyncio.create_task(self._refresh())
            self.refreshing.add_done_callback(lambda t: t.cancelled() or t.exception())  # logged in _refresh
        if self.copy.params is None:  # the first requests wait for a copy (and fail if none comes)
            if self.refreshing is None:  # cannot happen: a copy without parameters is stale
                raise RuntimeError("no policy parameters and no fetch under way")
            await asyncio.shield(self.refreshing)
        slate, shown = self.copy.choose(q)
        response = self.remember(q.request_id, shown)
        if len(self.background) >= self.max_pending:
            try:  # the learner is behind: this request waits instead of queueing more (not for ever)
                await asyncio.wait_for(response, self.wait_s)
            except Exception as exc:  # noqa: BLE001 -- the impression is in the feedback log all the same
                log.warning("policy did not take an impression (%s)", str(exc)[:200] or type(exc).__name__)
        else:
            self._later(response)
        return slate

    async def _refresh(self) -> None:
        try:
            started = time.monotonic()
            params = await asyncio.wait_for(self.fetch(), timeout=self.fetch_timeout_s)
            self.copy.install(params, started)
        except Exception as exc:
            log.warning("policy parameters not refreshed (%s); the copy stays at %s", str(exc)[:200] or
                        type(exc).__name__, self.copy.params.version if self.copy.params else "none")
            raise
        finally:
            self.refreshing = None

    def _later(self, response: Awaitable[object]) -> None:
        async def wait() -> None:
            try:
                await response
            except Exception as exc:  # noqa: BLE001 -- the impression is still in the feedback log
                log.warning("policy did not receive an impression (%s)", str(exc)[:200] or type(exc).__name__)

        task = asyncio.create_task(wait())
        self.background.add(task)
        task.add_done_callback(self.background.discard)
