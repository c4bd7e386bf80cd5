"""The Serve deployments behind the ingress: retriever, ranker (batched) and the policy actor.

Each loads what it serves from the directories training exports (a ranker directory embeds its
retriever), so a new model version is a redeploy with another ``model_dir``/``model_version``.
"""

from __future__ import annotations

import collections

import numpy as np
import torch
from ray import serve

from serving.index import VectorIndex
from serving.netbind import bind_replica_grpc_to_node_address
from serving.schemas import AppArgs
from training import storage
from training.candidates import Candidates
from training.data.funnel import lookup
from training.data.interactions import Interactions
from training.modeldir import load_model
from training.models.bandit import LinUCBPolicy, PolicyConfig
from training.models.retriever import left_pad


def _history(items: list[int], times: list[int] | None, num_items: int, default_us: int = 0) -> Interactions:
    """One history row; without ``times`` every item is dated ``default_us``."""
    arr = np.asarray(items, dtype=np.int64)
    t = np.asarray(times, dtype=np.int64) if times is not None else np.full(len(arr), default_us, np.int64)
    return Interactions(np.array([0, len(arr)], dtype=np.int64), arr, t, num_items)


@serve.deployment
class Retriever:
    """User tower + the FAISS index over the item-embedding table (:mod:`serving.index`) -> the
    top ``eval_candidates`` unseen items with the ranker's dense features."""

    def __init__(self, args: AppArgs):
        bind_replica_grpc_to_node_address()
        self.pipe = load_model(args.model_dir)
        self.num_items = self.pipe.stage.retriever.item_vecs.shape[0]
        self.index = VectorIndex(self.pipe.stage.retriever.item_vecs.numpy())

    def ready(self) -> bool:
        return True

    def candidates(self, history: list[int], times: list[int] | None = None) -> dict:
        """``times`` (microseconds) date the history for the recent-popularity feature; without
        them (an anonymous session) it is measured at the end of the training data."""
        hist = _history(history, times, self.num_items, self.pipe.stage.end_us)
        user = self.pipe.stage.retriever.user_vectors(hist).numpy()
        items, scores = self.index.search(user, self.pipe.k, [hist.row(0)])
        c = self.pipe.stage.from_search(hist, items, scores)
        return {"items": c.items[0], "dense": c.dense[0]}


@serve.deployment
class Ranker:
    """The multimodal ranker over each request's candidates, ``@serve.batch``-ed across requests
    (32 requests cost ~10x one on CPU, see BENCHMARKS.md)."""

    def __init__(self, args: AppArgs):
        bind_replica_grpc_to_node_address()
        self.pipe = load_model(args.model_dir)
        self.num_items = self.pipe.stage.retriever.item_vecs.shape[0]
        self.rank.set_max_batch_size(args.max_batch_size)
        self.rank.set_batch_wait_timeout_s(args.batch_wait_timeout_s)

    def ready(self) -> bool:
        return True

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def rank(self, requests: list[dict]) -> list[list[dict]]:
        """Each request: ``history`` (item ids), ``user`` (internal id or None), ``items``/``dense``
        (its candidates). Returns each request's candidates, best first, with reasons."""
        rows = [np.asarray(r["history"], dtype=np.int64) for r in requests]
        lengths = np.array([len(r) for r in rows])
        hist = Interactions(np.r_[0, np.cumsum(lengths)].astype(np.int64),
                            np.concatenate(rows) if len(rows) else np.zeros(0, np.int64),
                            np.zeros(int(lengths.sum()), np.int64), self.num_items)
        k = max(len(r["items"]) for r in requests)
        items = np.full((len(requests), k), -1, dtype=np.int64)
        dense = np.zeros((len(requests), k, requests[0]["dense"].shape[-1]), dtype=np.float32)
        for i, r in enumerate(requests):
            items[i, :len(r["items"])], dense[i, :len(r["items"])] = r["items"], r["dense"]
        cands = Candidates(np.arange(len(requests)), items, dense, np.zeros(items.shape, bool))
        stage = None
        if self.pipe.stages is not None:
            padded = left_pad(rows, self.pipe.ranker.config.max_len)
            stage = np.zeros(padded.shape, np.int64)
            for i, r in enumerate(requests):
                if r.get("user") is not None:
                    stage[i] = lookup(self.pipe.stages, np.array([r["user"]]), padded[i:i + 1])[0]
            stage = torch.from_numpy(stage)
        return self.pipe.ranked_lists(hist, cands, stage)


@serve.deployment(num_replicas=1)
class Policy:
    """The contextual bandit that orders the final slate, logs propensities and learns from
    ``/feedback``. One replica (its state is the model); checkpointed every ``checkpoint_every``
    updates and on shutdown, and restored on start, so a restart loses at most the updates since the
    last checkpoint -- which the durable feedback log still holds for a replay."""

    def __init__(self, args: AppArgs):
        bind_replica_grpc_to_node_address()
        self.args = args
        self.config = PolicyConfig(epsilon=args.policy_epsilon, alpha=args.policy_alpha, seed=args.policy_seed)
        if storage.exists(args.policy_state):
            self.policy = LinUCBPolicy.from_bytes(storage.read_bytes(args.policy_state), self.config)
        else:
            self.policy = LinUCBPolicy(self.config, np.random.default_rng(args.policy_seed))
        self.shown: collections.OrderedDict[str, dict[str, np.ndarray]] = collections.OrderedDict()
        self.since_checkpoint = 0

    def version(self) -> str:
        return f"linucb-eps{self.config.epsilon}-u{self.policy.updates}"

    def choose(self, request_id: str, items: list[dict], context: dict, k: int) -> list[dict]:
        shown = self.policy.choose(items, context, k)
        self.policy.observe_impression(shown)
        self.shown[request_id] = {items[s.index]["item_id"]: s.features for s in shown}
        while len(self.shown) > 100_000:  # feedback for very old requests is only logged
            self.shown.popitem(last=False)
        self._maybe_checkpoint(len(shown))
        return [{"index": s.index, "position": s.position, "propensity": s.propensity, "greedy": s.greedy}
                for s in shown]

    def feedback(self, request_id: str, item_id: str, event: str) -> bool:
        """Learn from one event; False when the (request, item) pair was not shown by this policy."""
        features = self.shown.get(request_id, {}).get(item_id)
        if features is None:
            return False
        self.policy.observe_feedback(features, event)
        self._maybe_checkpoint(1)
        return True

    def _maybe_checkpoint(self, n: int) -> None:
        self.since_checkpoint += n
        if self.since_checkpoint >= self.args.checkpoint_every:
            self.checkpoint()

    def checkpoint(self) -> None:
        fs, path = storage.resolve(self.args.policy_state)
        parent = path.rsplit("/", 1)[0]
        fs.create_dir(parent, recursive=True)
        tmp = path + ".tmp"
        with fs.open_output_stream(tmp) as out:
            out.write(self.policy.state_bytes())
        fs.move(tmp, path)
        self.since_checkpoint = 0

    def __del__(self):  # Serve calls it on graceful shutdown / redeploy
        try:
            self.checkpoint()
        except Exception:  # noqa: BLE001 -- nothing sensible to do at interpreter teardown
            pass
