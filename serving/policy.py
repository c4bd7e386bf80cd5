"""The Policy deployment: the contextual bandit (:mod:`training.models.bandit`) that orders the
final slate, logs exact propensities and learns from ``/feedback``.

One replica (its state is the model). It keeps, for each of the last ``policy_pending`` requests,
the feature rows of the items it showed (float32 copies, ``k x dim`` each), so feedback can update
with exactly what the policy saw; older requests' feedback is still logged, not learned from.
Memory is therefore bounded by ``policy_pending * k * dim * 4`` bytes (:meth:`Policy.memory`).
Checkpointed by a background thread (at most every ``checkpoint_interval_s``, only when it changed:
never on the request path, however slow the store) and on shutdown, and restored on start.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time

import numpy as np
from ray import serve

from serving.netbind import bind_replica_grpc_to_node_address
from serving.schemas import AppArgs
from training import storage
from training.models.bandit import POLICY_COLUMNS, LinUCBPolicy, PolicyConfig

log = logging.getLogger(__name__)


def policy_config(args: AppArgs) -> PolicyConfig:
    return PolicyConfig(epsilon=args.policy_epsilon, alpha=args.policy_alpha, seed=args.policy_seed,
                        item_features=POLICY_COLUMNS + args.policy_item_dim, diversity=args.policy_diversity,
                        prior_item=tuple(args.policy_prior_item), prior_score=args.policy_prior_score,
                        ridge=args.policy_ridge)


@serve.deployment(num_replicas=1)
class Policy:
    def __init__(self, args: AppArgs):
        bind_replica_grpc_to_node_address()
        self.args = args
        self.config = policy_config(args)
        self.fs, self.state_path = storage.resolve(args.policy_state)
        self.fs.create_dir(self.state_path.rsplit("/", 1)[0], recursive=True)
        self.policy = self._restore()
        self.shown: collections.OrderedDict[str, dict[str, np.ndarray]] = collections.OrderedDict()
        self.changed = 0  # updates since the last checkpoint
        # Serve runs sync methods in a thread pool: one request at a time changes the state
        self.lock = threading.RLock()
        self.write_lock = threading.Lock()  # one checkpoint write at a time
        self.stop = threading.Event()
        self.saver = threading.Thread(target=self._save_loop, name="policy-checkpoint", daemon=True)
        self.saver.start()

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

    def choose(self, request_id: str, items: list[dict], context: dict, k: int,
               item_features: np.ndarray | None = None, item_vectors: np.ndarray | None = None,
               epsilon: float | None = None, explore_pool: np.ndarray | None = None) -> dict:
        """The slate (indices into ``items``, positions, propensities) and the policy version
        that chose it (see :meth:`~training.models.bandit.LinUCBPolicy.choose`)."""
        with self.lock:
            shown = self.policy.choose(items, context, k, item_features, item_vectors, epsilon, explore_pool)
            if self.args.policy_learning:
                self.policy.observe_impression(shown)
                self.shown[request_id] = {items[s.index]["item_id"]: s.features for s in shown}
                while len(self.shown) > self.args.policy_pending:  # older feedback is only logged
                    self.shown.popitem(last=False)
                self.changed += len(shown)
            version = self.version()
        return {"version": version, "slate": [{"index": s.index, "position": s.position, "propensity": s.propensity,
                                               "greedy": s.greedy} for s in shown]}

    def feedback(self, request_id: str, item_id: str, event: str) -> bool:
        """Learn from one event; False when the (request, item) pair is not pending here."""
        with self.lock:
            features = self.shown.get(request_id, {}).get(item_id)
            if features is None:
                return False
            self.policy.observe_feedback(features, event)
            self.changed += 1
        return True

    def memory(self) -> dict:
        """What bounds this replica's memory: pending requests and the bytes of their features."""
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
            tmp = f"{self.state_path}.tmp-{os.getpid()}"
            storage.write_durably(self.fs, tmp, self.state_path, data)
            with self.lock:
                self.changed -= changed
            return True

    def __del__(self):  # Serve calls it on graceful shutdown / redeploy
        try:
            self.stop.set()
            self.checkpoint(only_if_changed=True)
        except Exception:  # noqa: BLE001 -- nothing sensible to do at interpreter teardown
            pass
