"""Train the two-tower retriever with Ray Train (``TorchTrainer``, DDP over N workers).

``train_retriever(job)`` is the plain function behind ``raycart train retriever``:

1. build the split (validation for early stopping, test for the final metrics) and the item
   features (attributes, plus text/image embeddings by Ray Data batch inference, cached);
2. ship the training sequences as a Ray Dataset, sharded across the workers;
3. each worker runs :func:`train_loop` (gloo on CPU, nccl + AMP on GPU); rank 0 evaluates
   NDCG@10 on validation every epoch, saves a checkpoint (model, optimiser, epoch, best model,
   early-stopping state) and stops all ranks after ``patience`` epochs without improvement;
   a worker that dies is replaced and the run resumes from the last checkpoint
   (``FailureConfig``); rerunning the same job name resumes as well;
4. the driver loads the best weights, evaluates the test part with the same harness as
   ``raycart evaluate``, and exports a model directory that loads without Ray.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from training.data.dataset import Dataset, load_dataset
from training.data.interactions import Interactions
from training.data.splits import EvalTask, build_split, split_from_manifest
from training.evaluation.metrics import EvalConfig, evaluate
from training.inference.features import build_item_features
from training.inference.modeldir import ModelCard, TrainedOn, dataset_fingerprint, save_model_dir
from training.jobs.loop import LoopSpec, RunSummary, SavedState, driver_dataset, fit, plot_learning_curve, run_epochs
from training.jobs.run_settings import RUN
from training.models.encoders import ImageEncoderConfig, TextEncoderConfig
from training.models.retriever import ItemFeatures, RetrieverConfig, RetrieverScorer, TwoTower, TwoTowerTrain, left_pad

if TYPE_CHECKING:
    from ray import ObjectRef

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrieverJob:
    data: str
    out: str
    model: RetrieverConfig = field(default_factory=RetrieverConfig)
    scheme: str = RUN.scheme
    workers: int = RUN.workers
    use_gpu: bool = RUN.gpu
    storage: str = RUN.storage
    name: str | None = None  # default: "retriever-" + a hash of data, scheme and model config
    max_failures: int = RUN.max_failures
    placement: str = RUN.placement  # Ray Train workers: PACK, SPREAD, STRICT_SPREAD (one per node) or STRICT_PACK
    text: TextEncoderConfig | None = None
    image: ImageEncoderConfig | None = None
    cache_dir: str = "raycart-work/cache"
    valid_users: int = 0  # 0: every validation user; else a fixed seeded sample (faster epochs)
    overwrite: bool = True


def sequence_targets(items: np.ndarray, times: np.ndarray, target: str = "next") -> tuple[np.ndarray, np.ndarray]:
    """One user's training pairs: the inputs and, per input position, the item it should predict.

    ``next``: the next item (SASRec). ``basket``: an item of the next basket (the next distinct
    timestamp) that the user has not had before -- the protocol excludes history from the ranking,
    so a repeat can never be a hit; position ``k`` of a basket targets new item ``k mod n`` of the
    next basket, so every such item is a target somewhere; -1 where the next basket has none. The last
    basket has no target and is not an input. (Next-basket objective as in Yu et al., "A Dynamic
    Recurrent Model for Next Basket Recommendation", SIGIR 2016.)

    >>> sequence_targets(np.array([1, 2, 3, 1, 5]), np.array([0, 0, 1, 1, 1]), "basket")
    (array([1, 2]), array([3, 5]))
    """
    if target == "next":
        return items[:-1], items[1:]
    starts = np.flatnonzero(np.r_[True, times[1:] != times[:-1]])  # first position of each basket
    if len(starts) < 2:
        return items[:0], items[:0]
    ends = np.r_[starts[1:], len(items)]
    n = starts[-1]  # inputs: every basket but the last
    out = np.full(n, -1, dtype=np.int64)
    seen = set(items[starts[0]:ends[0]].tolist())
    for b in range(len(starts) - 1):
        nxt = items[starts[b + 1]:ends[b + 1]]
        new = [i for i in dict.fromkeys(nxt.tolist()) if i not in seen]
        if new:
            out[starts[b]:ends[b]] = np.resize(np.array(new, dtype=np.int64), ends[b] - starts[b])
        seen.update(nxt.tolist())
    return items[:n], out


@dataclass(frozen=True)
class Sequences:
    """The retriever's training examples: ``inputs`` ``(N, max_len)``, left-padded item ids, and
    ``targets`` ``(N, max_len)``, the item each position should predict (-1: none, or padding)."""

    inputs: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.inputs)

    def columns(self) -> dict[str, np.ndarray]:
        """The Ray Dataset's columns (see :func:`training.jobs.loop.driver_dataset`)."""
        return {"inputs": self.inputs, "targets": self.targets}


@dataclass(frozen=True)
class RetrieverInputs:
    """What the driver prepares once (:func:`prepare_inputs`) for training and for the export."""

    dataset: Dataset
    valid: EvalTask  # early stopping (possibly a seeded sample of the users: ``job.valid_users``)
    test: EvalTask
    features: ItemFeatures
    sequences: Sequences
    log_q: np.ndarray  # (num_items,) log sampling probability, for the sampled-softmax correction


@dataclass(frozen=True)
class RetrieverWorkerInputs:
    """What every Ray Train worker gets (``train_loop_config["inputs"]``): the job, and the shared
    arrays as object-store references (one copy per node, not one per worker). The training
    sequences come as the worker's Ray Data shard, batches of ``inputs`` and ``targets``."""

    job: RetrieverJob
    features: ObjectRef  # ItemFeatures.arrays()
    valid: ObjectRef  # EvalTask
    log_q: np.ndarray


def training_sequences(train: Interactions, max_len: int, target: str = "next", windows: int = 1) -> Sequences:
    """Left-padded input sequences and their targets (see :func:`sequence_targets`), up to
    ``windows`` consecutive windows of ``max_len`` per user, newest first (windows after the first
    start without the older context)."""
    inputs, targets = [], []
    for u in range(train.num_users):
        lo, hi = train.indptr[u], train.indptr[u + 1]
        x, y = sequence_targets(train.items[lo:hi], train.times[lo:hi], target)
        for w in range(windows):
            end = len(x) - w * max_len
            if end < 1:
                break
            if (y[max(0, end - max_len):end] >= 0).any():  # a window with no target teaches nothing
                inputs.append(x[max(0, end - max_len):end])
                targets.append(y[max(0, end - max_len):end])
    return Sequences(left_pad(inputs, max_len), left_pad(targets, max_len))


def train_loop(loop_config: dict) -> None:
    """Per-worker loop (runs inside Ray Train; the epoch/checkpoint logic is :func:`run_epochs`)."""
    import ray
    import ray.train
    import ray.train.torch

    inputs: RetrieverWorkerInputs = loop_config["inputs"]
    job = inputs.job
    cfg = job.model
    feats = ItemFeatures.from_arrays(ray.get(inputs.features))
    valid_task: EvalTask = ray.get(inputs.valid)
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed)
    model = TwoTower(cfg, feats)
    train_module = ray.train.torch.prepare_model(TwoTowerTrain(model))
    opt = torch.optim.Adam(train_module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=job.use_gpu)
    shard = ray.train.get_dataset_shard("train")
    log_q = torch.tensor(inputs.log_q).to(device)

    def train_epoch(epoch: int) -> tuple[float, int, int]:
        gen = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + epoch * 10 + rank)
        total, steps = 0.0, 0
        for batch in shard.iter_torch_batches(batch_size=cfg.batch_size, dtypes=torch.int64, device=device,
                                              local_shuffle_buffer_size=cfg.batch_size * 8,
                                              local_shuffle_seed=cfg.seed + epoch):
            with torch.autocast("cuda", enabled=job.use_gpu):
                loss = train_module(batch["inputs"], batch["targets"], log_q, gen)
            opt.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            total += loss.item()
            steps += 1
        return total / max(steps, 1), steps, steps * cfg.batch_size

    def validate() -> float:
        return evaluate(RetrieverScorer(model).score, valid_task, EvalConfig(ks=(10,), batch_size=256))["NDCG@10"]

    run_epochs(LoopSpec("retriever", cfg.epochs, cfg.patience), model, opt, train_epoch, validate)


def run_name(job: RetrieverJob) -> str:
    """Same data, split, model and encoders -> same run (so a rerun resumes); otherwise a new one."""
    key = json.dumps({"data": str(job.data), "scheme": job.scheme, "model": job.model.to_dict(),
                      "workers": job.workers, "text": job.text.__dict__ if job.text else None,
                      "image": job.image.__dict__ if job.image else None}, sort_keys=True)
    return "retriever-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def prepare_inputs(job: RetrieverJob) -> RetrieverInputs:
    """Dataset, splits, item features and training sequences (on the driver; no Ray Train)."""
    from training.inference.embed import embed_items

    ds = load_dataset(job.data)
    spec = split_from_manifest(ds, job.scheme)
    valid = build_split(ds, spec, "valid", name=job.scheme)
    test = build_split(ds, spec, "test", name=job.scheme)
    text = image = None
    if job.model.use_text and job.text is not None and any(ds.items["title"].to_pylist()):
        text = embed_items(ds, "text", job.text, job.cache_dir, concurrency=max(1, min(job.workers, 2)),
                           use_gpu=job.use_gpu)
    if job.model.use_image and job.image is not None and any(ds.items["image"].to_pylist()):
        image = embed_items(ds, "image", job.image, job.cache_dir, concurrency=max(1, min(job.workers, 2)),
                            use_gpu=job.use_gpu)
    feats = build_item_features(ds.items, valid.train, text, image)
    sequences = training_sequences(valid.train, job.model.max_len, job.model.target, job.model.windows)
    counts = valid.train.item_counts().astype(np.float64) + 1.0  # add-one: every item samplable
    log_q = np.log(counts / counts.sum()).astype(np.float32)
    return RetrieverInputs(dataset=ds, valid=valid.sample_users(job.valid_users, seed=job.model.seed), test=test,
                           features=feats, sequences=sequences, log_q=log_q)


def train_retriever(job: RetrieverJob, callbacks: list | None = None) -> dict:
    """Run the whole job; returns the test metrics. See the module docstring."""
    import ray

    start = time.time()
    inputs = prepare_inputs(job)
    ds, feats = inputs.dataset, inputs.features
    log.info(f"[retriever] {ds.source}: {len(inputs.sequences):,} training sequences, {ds.num_items:,} items, "
          f"{int(feats.known.sum()):,} seen in training; validation users {len(inputs.valid.users):,}; "
          f"text {'on' if feats.text is not None else 'off'}, image {'on' if feats.image is not None else 'off'}")
    name = job.name or run_name(job)
    log.info(f"[retriever] Ray Train run '{name}' under {job.storage} (rerunning the same job resumes it)")
    worker = RetrieverWorkerInputs(job=job, features=ray.put(feats.arrays()), valid=ray.put(inputs.valid),
                                   log_q=inputs.log_q)
    saved = fit(train_loop, worker, name=name, storage_path=job.storage, workers=job.workers, use_gpu=job.use_gpu,
                max_failures=job.max_failures, placement=job.placement,
                datasets={"train": driver_dataset(inputs.sequences.columns())}, callbacks=callbacks)
    return export_retriever(job, inputs, saved, start)


def export_retriever(job: RetrieverJob, inputs: RetrieverInputs | None, saved: SavedState,
                     start: float | None = None) -> dict:
    """Evaluate the best state of a run (``saved``: a checkpoint's ``state.pt``) on the test split
    and write the model directory ``job.out``; ``inputs`` from :func:`prepare_inputs` (recomputed
    when None, e.g. exporting a Tune trial's checkpoint in the sweep driver)."""
    start = time.time() if start is None else start
    inputs = inputs if inputs is not None else prepare_inputs(job)
    ds, test, feats = inputs.dataset, inputs.test, inputs.features
    model = TwoTower(job.model, feats)
    model.load_state_dict(saved["best_model"])
    # test: the validation target is history now; items seen up to it get their id vectors
    test_feats = build_item_features(ds.items, test.train, feats.text, feats.image)
    model.items.known.copy_(torch.from_numpy(test_feats.known.astype(np.float32)))
    scorer = RetrieverScorer(model)
    test_metrics = evaluate(scorer.score, test)
    history = [dict(epoch) for epoch in saved["history"]]  # plain dicts for the card and the plot
    run: RunSummary = {
        "model": "retriever", "data": job.data, "source": ds.source, "scheme": job.scheme, "part": "test",
        "workers": job.workers, "gpu": job.use_gpu, "epochs": len(history),
        "best_valid_NDCG@10": saved["best"], "seconds": round(time.time() - start, 1),
        "resumes": saved.get("resumes", 0)}
    summary = {**test_metrics, "run": run}

    def extra(tmp: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        with torch.no_grad():
            vecs = scorer.item_vecs.numpy()
        pq.write_table(pa.table({"item_id": np.arange(len(vecs), dtype=np.int64),
                                 "external_id": ds.items["external_id"],
                                 "embedding": pa.array(list(vecs), type=pa.list_(pa.float32()))}),
                       tmp / "items.parquet")
        (tmp / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
        (tmp / "history.json").write_text(json.dumps(history, indent=2) + "\n")
        plot_learning_curve(history, tmp / "learning_curve.png", "Retriever learning curve")

    card = ModelCard(kind="retriever", config=job.model.to_dict(), num_items=ds.num_items, metrics=test_metrics,
                     history=history, resumes=saved.get("resumes", 0),
                     trained_on=TrainedOn(data=job.data, source=ds.source, scheme=job.scheme,
                                          fingerprint=dataset_fingerprint(job.data)),
                     encoders={"text": job.text.__dict__ if job.text and feats.text is not None else None,
                               "image": job.image.__dict__ if job.image and feats.image is not None else None})
    save_model_dir(job.out, card, RetrieverScorer.state(model, test_feats), overwrite=job.overwrite, extra=extra)
    log.info(f"[retriever] done in {summary['run']['seconds']:.0f}s: test HR@10 {test_metrics['HR@10']:.4f} "
          f"NDCG@10 {test_metrics['NDCG@10']:.4f} (best valid NDCG@10 {saved['best']:.4f}, "
          f"{len(history)} epochs) -> {job.out}")
    return summary
