"""What the ranker trains on, prepared once on the driver (:func:`prepare_examples`).

The job (:class:`RankerJob`) and its fail-fast checks (:func:`check_job`), then:

1. load the dataset's split and the trained retriever directory (``job.retriever``);
2. **candidate generation as Ray Data batch inference**: for every validation user -- whose target
   the retriever never trained on -- the retriever's top ``train_candidates`` unseen items (hard
   negatives) plus their dense features (retriever score and rank, item-kNN score, popularity,
   price, recent popularity -- 0 where the timestamps are sequence positions); lists that miss
   their target are left out (see :meth:`CandidateGenerator.generate`); a seeded ``valid_fraction``
   of those users is held out, with the plain top ``eval_candidates`` lists, to early-stop on
   two-stage NDCG@10; where the events have types, the funnel stage of every history item and
   target (:mod:`training.data.funnel`); the shown-slate lists of the feedback log
   (``job.exposure``), weighted;
3. for encoder fine-tuning, the frozen bottom of each encoder over every item, once.

The result is one :class:`RankerInputs`; :mod:`training.jobs.train_ranker` trains on it and exports.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, fields, replace

import numpy as np
import scipy.sparse as sp
import torch

from training.baselines.itemknn import ItemKNN, ItemKNNConfig
from training.common.errors import DataError
from training.data.dataset import Dataset, load_dataset, read_manifest
from training.data.exposure import ExposureLists
from training.data.funnel import dataset_stage_map, lookup
from training.data.interactions import Interactions
from training.data.splits import EvalTask, build_split, split_from_manifest
from training.inference.candidates import CandidateGenerator, Candidates, generate_candidates
from training.inference.features import item_text
from training.inference.modeldir import ModelCard, read_card, read_state
from training.jobs.run_settings import RUN
from training.models.encoders import (
    ImageEncoder,
    ImageEncoderConfig,
    TextEncoder,
    TextEncoderConfig,
)
from training.models.ranker import RankerConfig
from training.models.retriever import ItemFeatures, RetrieverScorer, left_pad
from training.models.state import component
from training.models.text_tuning import bottom_states, image_bottom_states, require_peft

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RankerJob:
    data: str
    retriever: str  # retriever model directory (local or s3://)
    out: str
    model: RankerConfig = field(default_factory=RankerConfig)
    scheme: str = RUN.scheme
    workers: int = RUN.workers
    use_gpu: bool = RUN.gpu
    storage: str = RUN.storage
    name: str | None = None
    max_failures: int = RUN.max_failures
    placement: str = RUN.placement  # Ray Train workers: PACK, SPREAD, STRICT_SPREAD (one per node) or STRICT_PACK
    valid_fraction: float = 0.1  # of the validation users, held out for early stopping
    knn: ItemKNNConfig = field(default_factory=ItemKNNConfig)
    candidate_actors: int = 1
    text: TextEncoderConfig | None = None  # the text encoder to fine-tune (model.text_tune_layers > 0)
    image: ImageEncoderConfig | None = None  # the image encoder to fine-tune (model.image_tune_layers > 0)
    overwrite: bool = True
    init_from: str | None = None  # warm start: a ranker directory whose weights (where shapes match) start the run
    exposure: str | None = None  # extra weighted lists of shown slates (training.data.exposure), e.g. from retrain
    # fine-tuning on what is new (raycart retrain): the training lists whose target happened at or after
    # recent_since_us (microseconds) -- and the shown-slate lists -- weigh recent_weight, and of the
    # older lists a seeded `replay` fraction is kept (replay of older data against forgetting)
    recent_since_us: int | None = None
    recent_weight: float = 1.0
    replay: float = 1.0
    warmup_steps: int = 0  # the learning rate ramps up linearly over this many optimiser steps


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
    weight: np.ndarray | None = None  # (users,) each user's weight in the validation mean (None: equal)


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


def has_event_types(data: str) -> bool:
    """Whether a dataset's events have more than one type (view/click/cart/purchase)."""
    counts = read_manifest(data).get("counts", {})
    return sum(1 for k in counts if k.startswith("events_")) > 1


def check_job(job: RankerJob) -> ModelCard:
    """Fail fast, before any Ray work, on what the job's inputs cannot do; returns the retriever's
    card."""
    card = read_card(job.retriever)
    if card.kind != "retriever":
        raise DataError(f"{job.retriever}: a ranker reranks a retriever; this directory holds a "
                        f"{card.kind!r} model")
    if job.model.text_tune_layers > 0 and job.text is None:
        raise DataError("--text-tune-layers needs the text encoder to fine-tune (--text-encoder)")
    if job.model.text_tune_layers > 0 and job.model.text_tune_mode == "lora":
        try:
            require_peft()
        except ImportError as exc:
            raise DataError(str(exc)) from exc
    if job.model.image_tune_layers > 0 and job.image is None:
        raise DataError("--image-tune-layers needs the image encoder to fine-tune (--image-encoder)")
    check_recency(job.recent_weight, job.replay, job.warmup_steps)
    return card


def check_recency(recent_weight: float, replay: float, warmup_steps: int, lr_scale: float = 1.0) -> None:
    """The fine-tuning levers' ranges (also checked by ``raycart retrain`` before any work, with its
    ``lr_scale``)."""
    if not lr_scale > 0:
        raise DataError(f"lr_scale must be > 0, got {lr_scale}")
    if not recent_weight > 0:
        raise DataError(f"recent_weight must be > 0, got {recent_weight}")
    if not 0 < replay <= 1:
        raise DataError(f"replay must be in (0, 1], got {replay}")
    if warmup_steps < 0:
        raise DataError(f"warmup_steps must be >= 0, got {warmup_steps}")


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


def candidate_generator(retriever: RetrieverScorer, knn: ItemKNNConfig, train, prices: np.ndarray, timestamps) -> CandidateGenerator:
    return CandidateGenerator.fit(retriever, ItemKNN(knn).fit(train), train, prices, timestamps)


def prepare_examples(job: RankerJob) -> RankerInputs:
    """Everything the ranker trains and is tested on (driver side; candidates by Ray Data)."""
    import ray

    ds = load_dataset(job.data)
    card = check_job(job)
    r_state = read_state(job.retriever)
    retriever = RetrieverScorer.from_state(card.config, r_state)
    if retriever.item_vecs.shape[0] != ds.num_items:
        raise DataError(f"{job.retriever}: retriever has {retriever.item_vecs.shape[0]:,} items, "
                        f"{job.data} has {ds.num_items:,}: trained on another dataset?")
    spec = split_from_manifest(ds, job.scheme)
    valid = build_split(ds, spec, "valid", name=job.scheme)
    test = build_split(ds, spec, "test", name=job.scheme)
    prices = np.array([np.nan if p is None else p for p in ds.items["price"].to_pylist()], dtype=np.float64)
    cfg = job.model
    t0 = time.time()
    generator = candidate_generator(retriever, job.knn, valid.train, prices, ds.timestamps)
    if generator.recent_days is None:
        log.info(f"[ranker] {job.data}: timestamps are sequence positions, not times: recent popularity off (0)")
    rng = np.random.default_rng(cfg.seed)
    n = len(valid.users)
    held_mask = np.zeros(n, bool)
    held_mask[rng.choice(n, max(1, int(round(job.valid_fraction * n))), replace=False)] = True
    train_rows, held_rows = np.flatnonzero(~held_mask), np.flatnonzero(held_mask)
    generator_ref = ray.put(generator)
    train_task, held_task = valid.take(train_rows), valid.take(held_rows)
    tr = generate_candidates(generator_ref, train_task.history, cfg.train_candidates, train_task.targets,
                             concurrency=job.candidate_actors)
    he = generate_candidates(generator_ref, held_task.history, cfg.eval_candidates, None,
                             concurrency=job.candidate_actors)
    has_pos: np.ndarray = np.asarray(tr.label.any(1))  # lists without their target teach nothing (see CandidateGenerator.generate)
    log.info(f"[ranker] candidates for {len(train_rows):,} training + {len(held_rows):,} held-out users by Ray Data "
          f"in {time.time() - t0:.0f}s; target in the retriever's top {cfg.train_candidates}: {has_pos.mean():.1%} "
          f"-> {int(has_pos.sum()):,} training lists")
    if not has_pos.any():
        raise DataError(f"no training list holds its target in the retriever's top {cfg.train_candidates}: "
                        "raise --train-candidates or check the retriever")
    keep, weight = _recent_lists(job, train_task, has_pos, rng)
    held_weight = _recent_weights(job, held_task)
    train_task = train_task.take(np.flatnonzero(keep))
    tr = Candidates(tr.users[keep], tr.items[keep], tr.dense[keep], tr.label[keep])

    def pad(task):
        return left_pad([task.history.row(i) for i in range(task.history.num_users)], cfg.max_len)

    feats = ItemFeatures.from_arrays(component(r_state, "features", job.retriever))
    tuning = _bottom_states(job, ds)
    stages = dataset_stage_map(ds) if cfg.use_stage else None
    history, held_history = pad(train_task), pad(held_task)
    examples = RankerExamples(history=history, items=tr.items, dense=tr.dense, label=tr.label, weight=weight)
    held = HeldOut(cands=he, task=held_task, history=held_history, weight=held_weight)
    if stages is not None:
        examples = replace(examples, hist_stage=lookup(stages, train_task.users, history),
                           cand_stage=lookup(stages, train_task.users, tr.items))
        held = replace(held, hist_stage=lookup(stages, held_task.users, held_history))
    if job.exposure:
        lists = ExposureLists.load(job.exposure)
        if job.recent_since_us is not None:  # every shown slate is new
            lists = replace(lists, weight=lists.weight * job.recent_weight)
        examples = _with_exposure(examples, lists, valid.full, generator, stages, cfg.max_len)
    return RankerInputs(dataset=ds, test=test, retriever=retriever, retriever_state=r_state, retriever_card=card,
                        prices=prices, features=feats, tuning=tuning, stages=stages, examples=examples, held=held)


def _new_targets(task: EvalTask, since_us: int) -> np.ndarray:
    """Per user of ``task``: is its (first) target at or after ``since_us``?"""
    t = task.targets
    first = np.minimum(t.indptr[:-1], max(t.nnz - 1, 0))
    return (t.lengths() > 0) & (t.times[first] >= since_us)


def _recent_lists(job: RankerJob, task: EvalTask, has_pos: np.ndarray, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """Which training lists to keep (those holding their target; of the older ones, a ``replay``
    fraction) and their weights (``recent_weight`` where the target is at or after
    ``recent_since_us``; None: all 1)."""
    if job.recent_since_us is None:
        return has_pos, None
    recent = _new_targets(task, job.recent_since_us)
    keep = has_pos & (recent | (rng.random(len(recent)) < job.replay))
    log.info(f"[ranker] fine-tuning on what is new: {int((keep & recent).sum()):,} lists with a target since "
             f"the serving model (weight {job.recent_weight:g}) + {int((keep & ~recent).sum()):,} older ones "
             f"(replay {job.replay:g} of {int((has_pos & ~recent).sum()):,})")
    return keep, np.where(recent[keep], job.recent_weight, 1.0).astype(np.float32)


def _recent_weights(job: RankerJob, task: EvalTask) -> np.ndarray | None:
    """The held-out users' weights in the early-stopping NDCG: ``recent_weight`` where the target
    is new, as in training -- the epoch kept is the one best at what the lists were weighted for."""
    if job.recent_since_us is None:
        return None
    recent = _new_targets(task, job.recent_since_us)
    log.info(f"[ranker] early stopping on {len(recent):,} held-out users, {int(recent.sum()):,} with a new target "
             f"(weight {job.recent_weight:g})")
    return np.where(recent, job.recent_weight, 1.0)


def _with_exposure(examples: RankerExamples, lists: ExposureLists, interactions: Interactions,
                   generator: CandidateGenerator, stages: sp.csr_matrix | None, max_len: int) -> RankerExamples:
    """``examples`` plus the shown-slate lists (weighted; the sampled lists weigh 1), padded to one
    width; their histories from ``interactions`` (the split's sequences)."""
    if not len(lists):
        log.info("[ranker] exposure lists: none")
        return examples
    if lists.users.max() >= interactions.num_users or lists.items.max() >= interactions.num_items:
        raise DataError(f"exposure lists name users/items beyond the dataset's {interactions.num_users:,} users / "
                        f"{interactions.num_items:,} items: made for another dataset?")
    hist = lists.histories(interactions)
    c = generator.given(hist, lists.items, lists.label)
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
    own = examples.weight if examples.weight is not None else np.ones(len(examples), np.float32)
    out = RankerExamples(**merged, weight=np.r_[own, lists.weight.astype(np.float32)])
    log.info(f"[ranker] + {len(lists):,} shown-slate lists from the feedback log (engaged vs shown-and-skipped), "
          f"position weights mean {lists.weight.mean():.2f} max {lists.weight.max():.2f}")
    return out
