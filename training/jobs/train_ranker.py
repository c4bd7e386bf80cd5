"""Train the multimodal ranker with Ray Train on the retriever's candidates.

``train_ranker(job)`` is the plain function behind ``raycart train ranker``:

1. load the dataset's split and the trained retriever directory (``job.retriever``);
2. **candidate generation as Ray Data batch inference**: for every validation user -- whose target
   the retriever never trained on -- the retriever's top ``train_candidates`` unseen items (hard
   negatives) plus their dense features (retriever score and rank, item-kNN score, popularity,
   price, recent popularity -- 0 where the timestamps are sequence positions); lists that miss
   their target are left out (see :meth:`CandidateGenerator.generate`); a seeded ``valid_fraction``
   of those users is held out, with the plain top ``eval_candidates`` lists, to early-stop on
   two-stage NDCG@10; where the events have types, the funnel stage of every history item and
   target (:mod:`training.data.funnel`);
   and for encoder fine-tuning, the frozen bottom of each encoder over every item, once;
3. Ray Train ``TorchTrainer`` (DDP over ``workers``; example indices sharded per worker by Ray
   Data, the arrays shared through the object store), a checkpoint every epoch, resume after a
   worker dies or on a rerun (:mod:`training.jobs.loop`);
4. evaluate the two-stage pipeline (retrieve ``eval_candidates`` -> rank) on the test part next to
   the retriever alone, with the same harness as ``raycart evaluate``, and export a ranker
   directory that embeds its retriever and loads without Ray.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import numpy as np
import scipy.sparse as sp
import torch
from torch.nn.parallel import DistributedDataParallel

from training.baselines.itemknn import ItemKNN, ItemKNNConfig
from training.common.errors import DataError
from training.data.dataset import Dataset, load_dataset, read_manifest
from training.data.exposure import ExposureLists
from training.data.funnel import dataset_stage_map, lookup
from training.data.interactions import Interactions
from training.data.splits import EvalTask, build_split, split_from_manifest
from training.evaluation.metrics import EvalConfig, evaluate
from training.inference.candidates import (
    CandidateGenerator,
    Candidates,
    catalogue_scores,
    generate_candidates,
)
from training.inference.features import attribute_vocabulary, item_text
from training.inference.modeldir import (
    ModelCard,
    Reranks,
    TrainedOn,
    dataset_fingerprint,
    read_card,
    read_state,
    save_model_dir,
)
from training.inference.pipeline import Pipeline
from training.jobs.loop import LoopSpec, driver_dataset, fit, plot_learning_curve, run_epochs
from training.models.encoders import (
    ImageEncoder,
    ImageEncoderConfig,
    TextEncoder,
    TextEncoderConfig,
)
from training.models.ranker import Ranker, RankerConfig, ranker_loss
from training.models.retriever import ItemFeatures, RetrieverScorer, left_pad
from training.models.state import component
from training.models.text_tuning import (
    TunedImage,
    TunedText,
    bottom_states,
    image_bottom_states,
    require_peft,
    trainable_params,
)

if TYPE_CHECKING:
    from ray import ObjectRef

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RankerJob:
    data: str
    retriever: str  # retriever model directory (local or s3://)
    out: str
    model: RankerConfig = field(default_factory=RankerConfig)
    scheme: str = "loo"
    workers: int = 2
    use_gpu: bool = False
    storage: str = "raycart-work/ray-results"
    name: str | None = None
    max_failures: int = 2
    placement: str = "PACK"  # Ray Train workers: PACK, SPREAD, STRICT_SPREAD (one per node) or STRICT_PACK
    valid_fraction: float = 0.1  # of the validation users, held out for early stopping
    knn: ItemKNNConfig = field(default_factory=ItemKNNConfig)
    candidate_actors: int = 1
    text: TextEncoderConfig | None = None  # the text encoder to fine-tune (model.text_tune_layers > 0)
    image: ImageEncoderConfig | None = None  # the image encoder to fine-tune (model.image_tune_layers > 0)
    overwrite: bool = True
    init_from: str | None = None  # warm start: a ranker directory whose weights (where shapes match) start the run
    exposure: str | None = None  # extra weighted lists of shown slates (training.data.exposure), e.g. from retrain


@dataclass(frozen=True)
class RankerBatch:
    """One training batch: the rows of :class:`RankerExamples` as tensors on the worker's device."""

    history: torch.Tensor
    items: torch.Tensor
    dense: torch.Tensor
    label: torch.Tensor
    weight: torch.Tensor | None
    hist_stage: torch.Tensor | None
    cand_stage: torch.Tensor | None


@dataclass(frozen=True)
class RankerExamples:
    """The ranker's training lists, one row per list: the user's history and the candidates with
    their dense features and labels. Shared with the workers through the object store; each
    worker's Ray Data shard holds row numbers (column ``row``), which :meth:`batch` gathers."""

    history: np.ndarray  # (N, max_len) left-padded item ids
    items: np.ndarray  # (N, C) candidate item ids, -1 where a list is shorter
    dense: np.ndarray  # (N, C, F) the candidates' dense features (retriever score, kNN, popularity, ...)
    label: np.ndarray  # (N, C) bool: the list's target (or, from the feedback log, an engaged item)
    weight: np.ndarray | None = None  # (N,) list weights: sampled lists 1, shown slates by position
    hist_stage: np.ndarray | None = None  # (N, max_len) funnel stage of each history item (typed events)
    cand_stage: np.ndarray | None = None  # (N, C) funnel stage of each candidate

    def __len__(self) -> int:
        return len(self.items)

    def batch(self, rows: torch.Tensor, device: torch.device | str = "cpu") -> RankerBatch:
        def take(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(a)[rows].to(device)

        def maybe(a: np.ndarray | None) -> torch.Tensor | None:
            return None if a is None else take(a)

        return RankerBatch(take(self.history), take(self.items), take(self.dense), take(self.label),
                           maybe(self.weight), maybe(self.hist_stage), maybe(self.cand_stage))


@dataclass(frozen=True)
class HeldOut:
    """The held-out validation users for early stopping: the plain top lists, no target forced in."""

    cands: Candidates
    task: EvalTask
    history: np.ndarray  # (users, max_len)
    hist_stage: np.ndarray | None = None


@dataclass(frozen=True)
class RankerInputs:
    """What the driver prepares once (:func:`prepare_examples`) for training and for the export."""

    dataset: Dataset
    test: EvalTask
    retriever: RetrieverScorer
    retriever_state: dict  # the retriever directory's state components
    retriever_card: ModelCard
    prices: np.ndarray
    features: ItemFeatures
    tuning: dict  # the frozen encoder bottoms' outputs, by encoder ("text", "image"), when fine-tuning
    stages: sp.csr_matrix | None  # the funnel-stage map (typed events), else None
    examples: RankerExamples
    held: HeldOut


@dataclass(frozen=True)
class RankerWorkerInputs:
    """What every Ray Train worker gets (``train_loop_config["inputs"]``): the job and the shared
    arrays as object-store references; the worker's shard of list rows comes through Ray Data."""

    job: RankerJob
    examples: ObjectRef  # RankerExamples
    held: ObjectRef  # HeldOut
    features: ObjectRef  # ItemFeatures.arrays()
    tuning: ObjectRef  # dict, see RankerInputs.tuning
    init: ObjectRef | None  # the ranker weights to warm-start from


def has_event_types(data: str) -> bool:
    """Whether a dataset's events have more than one type (view/click/cart/purchase)."""
    counts = read_manifest(data).get("counts", {})
    return sum(1 for k in counts if k.startswith("events_")) > 1


def check_job(job: RankerJob) -> ModelCard:
    """Fail fast, before any Ray work, on what the job's inputs cannot do; returns the retriever's
    card."""
    doc = read_card(job.retriever)
    if doc.kind != "retriever":
        raise DataError(f"{job.retriever}: a ranker reranks a retriever; this directory holds a "
                        f"{doc.kind!r} model")
    if job.model.text_tune_layers > 0 and job.text is None:
        raise DataError("--text-tune-layers needs the text encoder to fine-tune (--text-encoder)")
    if job.model.text_tune_layers > 0 and job.model.text_tune_mode == "lora":
        try:
            require_peft()
        except ImportError as exc:
            raise DataError(str(exc)) from exc
    if job.model.image_tune_layers > 0 and job.image is None:
        raise DataError("--image-tune-layers needs the image encoder to fine-tune (--image-encoder)")
    return doc


class TunedModules(TypedDict, total=False):
    """The ``Ranker`` keyword arguments of the encoders being fine-tuned."""

    tuned_text: TunedText
    tuned_image: TunedImage


def _tuned_modules(job: RankerJob, tuning: dict | None) -> TunedModules:
    """``Ranker`` keyword arguments for the encoders being fine-tuned, from their bottom states."""
    out: TunedModules = {}
    if tuning and "text" in tuning:
        hidden, mask = tuning["text"]
        cfg = job.model
        assert job.text is not None, "check_job: text fine-tuning needs the text encoder"
        out["tuned_text"] = TunedText(TextEncoder(job.text), hidden, mask, cfg.text_tune_layers, cfg.text_tune_mode,
                                      cfg.text_lora_rank, cfg.text_lora_alpha)
    if tuning and "image" in tuning:
        states, has_image = tuning["image"]
        assert job.image is not None, "check_job: image fine-tuning needs the image encoder"
        out["tuned_image"] = TunedImage(ImageEncoder(job.image), states, job.model.image_tune_layers, has_image)
    return out


def _bottom_states(job: RankerJob, ds) -> dict:
    """Run the frozen bottoms of the encoders being fine-tuned once over every item."""
    from training.inference.embed import image_uris

    cfg, out = job.model, {}
    if cfg.text_tune_layers > 0:
        assert job.text is not None, "check_job: --text-tune-layers needs --text-encoder"
        t0 = time.time()
        out["text"] = bottom_states(TextEncoder(job.text), item_text(ds.items), cfg.text_tune_layers)
        how = f"LoRA r={cfg.text_lora_rank} on" if cfg.text_tune_mode == "lora" else "fine-tuning"
        log.info(f"[ranker] text encoder bottom ({job.text.name_or_path}, all but the last {cfg.text_tune_layers} "
              f"layers: {how} those) over {ds.num_items:,} items in {time.time() - t0:.0f}s: {out['text'][0].nbytes / 2**20:.0f} MiB")
    if cfg.image_tune_layers > 0:
        import io

        from PIL import Image

        from training.common import storage
        assert job.image is not None, "check_job: --image-tune-layers needs --image-encoder"
        t0 = time.time()
        uris = image_uris(ds)
        images = [Image.open(io.BytesIO(storage.read_bytes(u))) if u else None for u in uris]
        states = image_bottom_states(ImageEncoder(job.image), images, cfg.image_tune_layers)
        out["image"] = (states, np.array([u is not None for u in uris]))
        log.info(f"[ranker] image encoder bottom (all but the last {cfg.image_tune_layers} blocks) over "
              f"{ds.num_items:,} items in {time.time() - t0:.0f}s: {states.nbytes / 2**20:.0f} MiB")
    return out


def run_name(job: RankerJob) -> str:
    key = json.dumps({"data": str(job.data), "retriever": str(job.retriever), "scheme": job.scheme,
                      "model": job.model.to_dict(), "workers": job.workers, "knn": job.knn.__dict__,
                      "valid_fraction": job.valid_fraction, "text": job.text.__dict__ if job.text else None,
                      "image": job.image.__dict__ if job.image else None, "exposure": job.exposure},
                     sort_keys=True)
    return "ranker-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def _stage(retriever: RetrieverScorer, knn: ItemKNNConfig, train, prices: np.ndarray, timestamps) -> CandidateGenerator:
    return CandidateGenerator.fit(retriever, ItemKNN(knn).fit(train), train, prices, timestamps)


def list_scorer(cands: Candidates, users: np.ndarray, rank_fn, num_items: int):
    """A harness ``score_fn`` over precomputed candidate lists: ``rank_fn(rows) -> (len(rows), K)``
    logits for those lists; every other item scores -inf."""
    row_of = {int(u): i for i, u in enumerate(users)}

    def score(batch_users, history):
        rows = np.array([row_of[int(u)] for u in batch_users])
        return catalogue_scores(cands.items[rows], rank_fn(rows), num_items)

    return score


def warm_start(model: torch.nn.Module, state: dict) -> list[str]:
    """Load the parameters of ``state`` whose names and shapes match ``model``'s (a serving
    model's weights; tables that grew with new items stay fresh); the names loaded."""
    own = model.state_dict()
    taken = {k: torch.as_tensor(v) for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    model.load_state_dict(taken, strict=False)
    return sorted(taken)


def train_loop(loop_config: dict) -> None:
    """Per-worker loop (inside Ray Train)."""
    import ray
    import ray.train
    import ray.train.torch

    inputs: RankerWorkerInputs = loop_config["inputs"]
    job = inputs.job
    cfg = job.model
    examples: RankerExamples = ray.get(inputs.examples)
    held: HeldOut = ray.get(inputs.held)
    feats = ItemFeatures.from_arrays(ray.get(inputs.features))
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed)
    model = Ranker(cfg, feats, **_tuned_modules(job, ray.get(inputs.tuning)))
    if inputs.init is not None:  # warm start (before prepare_model: every worker the same)
        warm_start(model, ray.get(inputs.init))
    # the buffers (content features, precomputed encoder states) never change: do not broadcast
    # them every step
    module = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"broadcast_buffers": False})
    opt = torch.optim.Adam(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    shard = ray.train.get_dataset_shard("train")

    scaler = torch.amp.GradScaler("cuda", enabled=job.use_gpu)  # AMP on GPU; a no-op on CPU

    def train_epoch(epoch: int) -> tuple[float, int, int]:
        total, steps, samples = 0.0, 0, 0
        opt.zero_grad()
        for batch in shard.iter_torch_batches(batch_size=cfg.batch_size, dtypes=torch.int64,
                                              local_shuffle_buffer_size=cfg.batch_size * 8,
                                              local_shuffle_seed=cfg.seed + epoch):
            b = examples.batch(batch["row"].reshape(-1), device)
            steps += 1
            # gradient accumulation: an optimiser step every `grad_accum` batches; DDP all-reduces
            # only on that last one (no_sync on the others)
            last = steps % cfg.grad_accum == 0
            # (one worker trains the bare model: no DistributedDataParallel, nothing to sync)
            sync = module.no_sync() if not last and isinstance(module, DistributedDataParallel) else contextlib.nullcontext()
            with sync:
                with torch.autocast("cuda", enabled=job.use_gpu):  # through module(...) so DDP syncs gradients
                    logits, _, aux = module(b.history, b.items.clamp(min=0), b.dense, b.hist_stage, return_all=True)
                loss = ranker_loss(cfg, logits, aux, b.items, b.label, b.cand_stage, b.weight)
                scaler.scale(loss / cfg.grad_accum).backward()
            if last:
                scaler.step(opt)
                scaler.update()
                opt.zero_grad()
            total += loss.item()
            samples += len(b.items)
        return total / max(steps, 1), steps, samples

    def validate() -> float:
        return validation_ndcg(model, held)

    run_epochs(LoopSpec("ranker", cfg.epochs, cfg.patience), model, opt, train_epoch, validate)


@torch.no_grad()
def validation_ndcg(model: Ranker, held: HeldOut) -> float:
    cands, task = held.cands, held.task
    hist = torch.from_numpy(held.history)
    stage = torch.from_numpy(held.hist_stage) if held.hist_stage is not None else None

    def rank_fn(rows):
        items = torch.from_numpy(cands.items[rows])
        return model(hist[rows], items.clamp(min=0), torch.from_numpy(cands.dense[rows]),
                     stage[rows] if stage is not None else None)

    score = list_scorer(cands, task.users, rank_fn, task.num_items)
    return evaluate(score, task, EvalConfig(ks=(10,), batch_size=512))["NDCG@10"]


def prepare_examples(job: RankerJob) -> RankerInputs:
    """Everything the ranker trains and is tested on (driver side; candidates by Ray Data)."""
    import ray

    ds = load_dataset(job.data)
    doc = check_job(job)
    r_state = read_state(job.retriever)
    retriever = RetrieverScorer.from_state(doc.config, r_state)
    if retriever.item_vecs.shape[0] != ds.num_items:
        raise DataError(f"{job.retriever}: retriever has {retriever.item_vecs.shape[0]:,} items, "
                        f"{job.data} has {ds.num_items:,}: trained on another dataset?")
    spec = split_from_manifest(ds, job.scheme)
    valid = build_split(ds, spec, "valid", name=job.scheme)
    test = build_split(ds, spec, "test", name=job.scheme)
    prices = np.array([np.nan if p is None else p for p in ds.items["price"].to_pylist()], dtype=np.float64)
    cfg = job.model
    t0 = time.time()
    stage = _stage(retriever, job.knn, valid.train, prices, ds.timestamps)
    if stage.recent_days is None:
        log.info(f"[ranker] {job.data}: timestamps are sequence positions, not times: recent popularity off (0)")
    rng = np.random.default_rng(cfg.seed)
    n = len(valid.users)
    held_mask = np.zeros(n, bool)
    held_mask[rng.choice(n, max(1, int(round(job.valid_fraction * n))), replace=False)] = True
    train_rows, held_rows = np.flatnonzero(~held_mask), np.flatnonzero(held_mask)
    generator_ref = ray.put(stage)
    train_task, held_task = valid.take(train_rows), valid.take(held_rows)
    tr = generate_candidates(generator_ref, train_task.history, cfg.train_candidates, train_task.targets,
                             concurrency=job.candidate_actors)
    he = generate_candidates(generator_ref, held_task.history, cfg.eval_candidates, None,
                             concurrency=job.candidate_actors)
    has_pos = tr.label.any(1)  # lists without their target teach nothing (see CandidateGenerator.generate)
    log.info(f"[ranker] candidates for {len(train_rows):,} training + {len(held_rows):,} held-out users by Ray Data "
          f"in {time.time() - t0:.0f}s; target in the retriever's top {cfg.train_candidates}: {has_pos.mean():.1%} "
          f"-> {int(has_pos.sum()):,} training lists")
    if not has_pos.any():
        raise DataError(f"no training list holds its target in the retriever's top {cfg.train_candidates}: "
                        "raise --train-candidates or check the retriever")
    train_task = train_task.take(np.flatnonzero(has_pos))
    tr = Candidates(tr.users[has_pos], tr.items[has_pos], tr.dense[has_pos], tr.label[has_pos])

    def pad(task):
        return left_pad([task.history.row(i) for i in range(task.history.num_users)], cfg.max_len)

    feats = ItemFeatures.from_arrays(component(r_state, "features", job.retriever))
    tuning = _bottom_states(job, ds)
    stages = dataset_stage_map(ds) if cfg.use_stage else None
    history, held_history = pad(train_task), pad(held_task)
    examples = RankerExamples(history=history, items=tr.items, dense=tr.dense, label=tr.label)
    held = HeldOut(cands=he, task=held_task, history=held_history)
    if stages is not None:
        examples = replace(examples, hist_stage=lookup(stages, train_task.users, history),
                           cand_stage=lookup(stages, train_task.users, tr.items))
        held = replace(held, hist_stage=lookup(stages, held_task.users, held_history))
    if job.exposure:
        examples = _with_exposure(examples, ExposureLists.load(job.exposure), valid.full, stage, stages, cfg.max_len)
    return RankerInputs(dataset=ds, test=test, retriever=retriever, retriever_state=r_state, retriever_card=doc,
                        prices=prices, features=feats, tuning=tuning, stages=stages, examples=examples, held=held)


def _with_exposure(examples: RankerExamples, lists: ExposureLists, interactions: Interactions,
                   stage: CandidateGenerator, stages: sp.csr_matrix | None, max_len: int) -> RankerExamples:
    """``examples`` plus the shown-slate lists (weighted; the sampled lists weigh 1), padded to one
    width; their histories from ``interactions`` (the split's sequences)."""
    if not len(lists):
        log.info("[ranker] exposure lists: none")
        return examples
    if lists.users.max() >= interactions.num_users or lists.items.max() >= interactions.num_items:
        raise DataError(f"exposure lists name users/items beyond the dataset's {interactions.num_users:,} users / "
                        f"{interactions.num_items:,} items: made for another dataset?")
    hist = lists.histories(interactions)
    c = stage.given(hist, lists.items, lists.label)
    history = left_pad([hist.row(i) for i in range(hist.num_users)], max_len)
    extra = RankerExamples(history=history, items=c.items, dense=c.dense, label=c.label)
    if examples.hist_stage is not None:
        extra = replace(extra, hist_stage=lookup(stages, lists.users, history),
                        cand_stage=lookup(stages, lists.users, c.items))
    width = max(examples.items.shape[1], c.items.shape[1])
    fill = {"items": -1, "dense": 0.0, "label": False, "cand_stage": 0}  # the candidate axis

    def widen(a: np.ndarray, key: str) -> np.ndarray:
        if key not in fill or a.shape[1] == width:
            return a
        pad = [(0, 0), (0, width - a.shape[1])] + [(0, 0)] * (a.ndim - 2)
        return np.pad(a, pad, constant_values=fill[key])

    merged = {f.name: np.concatenate([widen(getattr(examples, f.name), f.name), widen(getattr(extra, f.name), f.name)])
              for f in fields(RankerExamples) if f.name != "weight" and getattr(examples, f.name) is not None}
    out = RankerExamples(**merged, weight=np.r_[np.ones(len(examples), np.float32), lists.weight.astype(np.float32)])
    log.info(f"[ranker] + {len(lists):,} shown-slate lists from the feedback log (engaged vs shown-and-skipped), "
          f"position weights mean {lists.weight.mean():.2f} max {lists.weight.max():.2f}")
    return out


def train_ranker(job: RankerJob, callbacks: list | None = None) -> dict:
    """Run the whole job; returns the test metrics of the two-stage pipeline."""
    import ray

    start = time.time()
    if job.text is not None:
        job = replace(job, text=job.text.resolved())
    if job.image is not None:
        job = replace(job, image=job.image.resolved())
    if not job.model.use_stage and has_event_types(job.data):
        job = replace(job, model=replace(job.model, use_stage=True))
        log.info("[ranker] the events have several types: event-type feature and cart/purchase heads on")
    ex = prepare_examples(job)
    n = len(ex.examples)
    name = job.name or run_name(job)
    log.info(f"[ranker] Ray Train run '{name}': {n:,} training lists of {job.model.train_candidates} candidates, "
          f"{len(ex.held.task.users):,} held-out users; rerunning the same job resumes it")
    init = None
    if job.init_from:  # the ranker's weights only, not the whole pipeline
        init = component(read_state(job.init_from), "ranker_weights", job.init_from)
        log.info(f"[ranker] warm start from {job.init_from}")
    worker = RankerWorkerInputs(job=job, examples=ray.put(ex.examples), held=ray.put(ex.held),
                                features=ray.put(ex.features.arrays()), tuning=ray.put(ex.tuning),
                                init=ray.put(init) if init is not None else None)
    saved = fit(train_loop, worker, name=name, storage_path=job.storage, workers=job.workers, use_gpu=job.use_gpu,
                max_failures=job.max_failures, placement=job.placement,
                datasets={"train": driver_dataset({"row": np.arange(n)})}, callbacks=callbacks)
    return export_ranker(job, ex, saved, start)


def export_ranker(job: RankerJob, ex: RankerInputs | None, saved: dict, start: float | None = None) -> dict:
    """Evaluate the best state of a run (``saved``: a checkpoint's ``state.pt``) as a two-stage
    pipeline and write the model directory ``job.out``; ``ex`` from :func:`prepare_examples`
    (recomputed when None)."""
    start = time.time() if start is None else start
    ex = ex if ex is not None else prepare_examples(job)
    ranker = Ranker(job.model, ex.features, **_tuned_modules(job, ex.tuning))
    ranker.load_state_dict(saved["best_model"])
    trainable = {"total": trainable_params(ranker), "text_encoder": trainable_params(ranker.tuned),
                 "image_encoder": trainable_params(ranker.tuned_image)}
    if ranker.tuned is not None or ranker.tuned_image is not None:
        # export the fine-tuned encoders' outputs as tables: serving needs no encoder states
        tables = {}
        if ranker.tuned is not None:
            tables["tuned_table"] = ranker.tuned.embed_all()
        if ranker.tuned_image is not None:
            tables["tuned_image_table"] = ranker.tuned_image.embed_all()
        exported = Ranker(job.model, ex.features, tuned_table=tables.get("tuned_table"),
                          tuned_image_table=tables.get("tuned_image_table"))
        exported.load_state_dict({k: v for k, v in saved["best_model"].items()
                                  if not k.startswith(("tuned.", "tuned_image."))}, strict=False)
        for key, table in tables.items():
            getattr(exported, key).copy_(torch.from_numpy(table))
        ranker = exported
    test = ex.test
    stage = _stage(ex.retriever, job.knn, test.train, ex.prices, ex.dataset.timestamps)
    vocab = attribute_vocabulary(ex.dataset.items)[2]
    pipeline = Pipeline(stage, ranker, vocab, ex.stages)
    t0 = time.time()
    two_stage = evaluate(pipeline.score, test)
    seconds_two_stage = time.time() - t0
    retrieval = evaluate(ex.retriever.score, test)
    history = saved["history"]
    gain = two_stage["NDCG@10"] / max(retrieval["NDCG@10"], 1e-12) - 1
    summary = {**two_stage, "retriever_only": retrieval, "run": {
        "model": "ranker", "data": job.data, "retriever": job.retriever, "scheme": job.scheme, "part": "test",
        "workers": job.workers, "gpu": job.use_gpu, "epochs": len(history),
        "epoch_numbers": [h["epoch"] for h in history], "best_valid_NDCG@10": saved["best"],
        "ndcg10_gain_over_retriever": gain, "eval_seconds": round(seconds_two_stage, 1),
        "seconds": round(time.time() - start, 1), "resumes": saved.get("resumes", 0),
        "recent_popularity_days": stage.recent_days,
        "trainable_params": trainable}}
    config = {"ranker": job.model.to_dict(), "retriever": ex.retriever_card.config, "knn": stage.knn.state()[0],
              "attribute_vocab": vocab}

    def extra(tmp: Path) -> None:
        (tmp / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
        (tmp / "history.json").write_text(json.dumps(history, indent=2) + "\n")
        plot_learning_curve(history, tmp / "learning_curve.png", "Ranker learning curve")

    r_doc = ex.retriever_card
    card = ModelCard(kind="ranker", config=config, num_items=ex.dataset.num_items, metrics=two_stage,
                     retriever_only=retrieval, history=history, resumes=saved.get("resumes", 0),
                     encoders=r_doc.encoders,
                     reranks=Reranks(path=job.retriever, metrics=r_doc.metrics, trained_on=r_doc.trained_on),
                     trained_on=TrainedOn(data=job.data, source=ex.dataset.source, scheme=job.scheme,
                                          fingerprint=dataset_fingerprint(job.data)))
    save_model_dir(job.out, card, Pipeline.state(stage, ranker, ex.retriever_state, ex.stages),
                   overwrite=job.overwrite, extra=extra)
    log.info(f"[ranker] done in {summary['run']['seconds']:.0f}s: test NDCG@10 {two_stage['NDCG@10']:.4f} "
          f"HR@10 {two_stage['HR@10']:.4f} (retriever alone {retrieval['NDCG@10']:.4f} / {retrieval['HR@10']:.4f}, "
          f"{gain:+.1%}) -> {job.out}")
    return summary
