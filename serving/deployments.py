"""The Serve deployments behind the ingress: retriever, ranker (batched) and the policy actor.

The Retriever and Ranker load what they serve from the directories training exports (a ranker
directory embeds its retriever); the model is their ``user_config``, so a new version rolls out
by reconfiguring the running replicas. Items added at runtime live in the :class:`ItemRegistry`
and reach every replica through :meth:`_ServesModel._sync`.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import threading

import numpy as np
import pyarrow.fs as pafs
import torch
from ray import serve
from ray.serve.handle import DeploymentHandle

from serving.index import VectorIndex
from serving.netbind import bind_replica_grpc_to_node_address
from serving.schemas import AppArgs, ModelSpec
from training import storage
from training.candidates import Candidates
from training.data.funnel import lookup
from training.data.interactions import Interactions
from training.modeldir import load_model, read_model_json
from training.models.bandit import LinUCBPolicy, PolicyConfig
from training.models.retriever import left_pad
from training.new_items import ContentEncoder, model_encoders, rows_table


def _history(items: list[int], times: list[int] | None, num_items: int, default_us: int = 0) -> Interactions:
    """One history row; without ``times`` every item is dated ``default_us``."""
    arr = np.asarray(items, dtype=np.int64)
    t = np.asarray(times, dtype=np.int64) if times is not None else np.full(len(arr), default_us, np.int64)
    return Interactions(np.array([0, len(arr)], dtype=np.int64), arr, t, num_items)


@serve.deployment(num_replicas=1)
class ItemRegistry:
    """The items added at runtime, in order (item ``n`` gets internal id ``catalogue size + n``),
    each stored under ``items_root`` before it is acknowledged and replayed on start. One replica:
    it is the single writer; every other replica pulls what it has not applied yet (:meth:`since`)."""

    def __init__(self, args: AppArgs):
        bind_replica_grpc_to_node_address()
        self.fs, self.root = storage.resolve(args.items_root)
        self.fs.create_dir(self.root, recursive=True)
        files = sorted(f.path for f in self.fs.get_file_info(pafs.FileSelector(self.root))
                       if f.path.endswith(".json"))
        self.records = [json.loads(self.fs.open_input_stream(f).read()) for f in files]
        self.ids = {r["item_id"] for r in self.records}

    def add(self, record: dict) -> int:
        """Store ``record``; its position, or -1 when the id was already added."""
        if record["item_id"] in self.ids:
            return -1
        n = len(self.records)
        path = f"{self.root}/item-{n:09d}.json"
        with self.fs.open_output_stream(path + ".tmp") as out:
            out.write(json.dumps(record).encode())
        self.fs.move(path + ".tmp", path)
        self.records.append(record)
        self.ids.add(record["item_id"])
        return n

    def since(self, n: int) -> list[dict]:
        return self.records[n:]


class _Served:
    """One model version as a Retriever or Ranker replica holds it, plus the runtime items it has
    applied (their content vectors come from this model's own item towers)."""

    def __init__(self, spec: ModelSpec):
        doc = read_model_json(spec.model_dir)
        self.pipe = load_model(spec.model_dir, doc)
        self.version = spec.model_version
        self.encoder = ContentEncoder(self.pipe.vocab, model_encoders(spec.model_dir, doc), *self.pipe.content_dims())
        self.applied = 0  # registry records applied
        self.index: VectorIndex | None = None

    def apply(self, records: list[dict]) -> None:
        if not records:
            return
        rows = rows_table(records)
        vecs = self.pipe.add_items(self.encoder.features(rows), rows["price"].to_numpy(zero_copy_only=False))
        if self.index is not None:
            self.index.add(vecs)
        self.applied += len(records)


class _ServesModel:
    """Reconfigurable model + runtime items for the Retriever and the Ranker. The model is the
    ``user_config`` (:class:`~serving.schemas.ModelSpec`): a new version is loaded next to the old
    one and swapped in once ready, so requests keep being answered during a rollout."""

    with_index = False

    def _init(self, registry: DeploymentHandle) -> None:
        bind_replica_grpc_to_node_address()
        self.registry = registry
        self.served: _Served | None = None
        self.lock = asyncio.Lock()

    def reconfigure(self, config: dict) -> None:
        served = _Served(ModelSpec(**config))
        if self.with_index:
            served.index = VectorIndex(served.pipe.stage.retriever.item_vecs.numpy())
        self.served = served  # runtime items are re-applied lazily (_sync), with this model's towers

    async def _sync(self, items_version: int) -> _Served:
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
        """Why this model could not place a new item, or None."""
        enc = self.served.encoder
        if not enc.usable(rows_table([record])):
            return ("the item has no content this model reads: give attributes it was trained on"
                    + (", a title/description" if enc.uses_text else "")
                    + (", an image" if enc.uses_image else ""))
        return None


@serve.deployment(max_ongoing_requests=16)
class Retriever(_ServesModel):
    """User tower + the FAISS index over the item-embedding table (:mod:`serving.index`) -> the
    top ``eval_candidates`` unseen items with the ranker's dense features."""

    with_index = True

    def __init__(self, args: AppArgs, registry: DeploymentHandle):
        self._init(registry)

    async def candidates(self, history: list[int], times: list[int] | None = None, items_version: int = 0) -> dict:
        """``times`` (microseconds) date the history for the recent-popularity feature; without
        them (an anonymous session) it is measured at the end of the training data."""
        s = await self._sync(items_version)
        pipe = s.pipe
        hist = _history(history, times, pipe.num_items, pipe.stage.end_us)
        user = pipe.stage.retriever.user_vectors(hist).numpy()
        items, scores = s.index.search(user, pipe.k, [hist.row(0)])
        c = pipe.stage.from_search(hist, items, scores)
        return {"items": c.items[0], "dense": c.dense[0]}


@serve.deployment(max_ongoing_requests=64)  # lets @serve.batch fill batches of 32
class Ranker(_ServesModel):
    """The multimodal ranker over each request's candidates, ``@serve.batch``-ed across requests
    (32 requests cost ~10x one on CPU, see BENCHMARKS.md)."""

    def __init__(self, args: AppArgs, registry: DeploymentHandle):
        self._init(registry)
        self.rank.set_max_batch_size(args.max_batch_size)
        self.rank.set_batch_wait_timeout_s(args.batch_wait_timeout_s)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def rank(self, requests: list[dict]) -> list[dict]:
        """Each request: ``history`` (item ids), ``user`` (internal id or None), ``items``/``dense``
        (its candidates), ``items_version``. Returns ``{"model_version", "ranked"}`` per request:
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
            stage = torch.from_numpy(stage)
        return [{"model_version": s.version, "ranked": ranked} for ranked in pipe.ranked_lists(hist, cands, stage)]


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
        self.fs, self.state_path = storage.resolve(args.policy_state)
        self.fs.create_dir(self.state_path.rsplit("/", 1)[0], recursive=True)
        # Serve runs sync methods in a thread pool: one request at a time changes the state
        self.lock = threading.RLock()

    def version(self) -> str:
        return f"linucb-eps{self.config.epsilon}-u{self.policy.updates}"

    def choose(self, request_id: str, items: list[dict], context: dict, k: int) -> dict:
        """The slate (indices into ``items``, positions, propensities) and the policy version
        that chose it."""
        with self.lock:
            shown = self.policy.choose(items, context, k)
            self.policy.observe_impression(shown)
            self.shown[request_id] = {items[s.index]["item_id"]: s.features for s in shown}
            while len(self.shown) > 100_000:  # feedback for very old requests is only logged
                self.shown.popitem(last=False)
            self._maybe_checkpoint(len(shown))
            version = self.version()
        return {"version": version, "slate": [{"index": s.index, "position": s.position, "propensity": s.propensity,
                                               "greedy": s.greedy} for s in shown]}

    def feedback(self, request_id: str, item_id: str, event: str) -> bool:
        """Learn from one event; False when the (request, item) pair was not shown by this policy."""
        with self.lock:
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
        # a private temporary name: during a rolling update the old and the new replica both write
        tmp = f"{self.state_path}.tmp-{os.getpid()}"
        with self.fs.open_output_stream(tmp) as out:
            out.write(self.policy.state_bytes())
        self.fs.move(tmp, self.state_path)
        self.since_checkpoint = 0

    def __del__(self):  # Serve calls it on graceful shutdown / redeploy
        try:
            with self.lock:
                self.checkpoint()
        except Exception:  # noqa: BLE001 -- nothing sensible to do at interpreter teardown
            pass
