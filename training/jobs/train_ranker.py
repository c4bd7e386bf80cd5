"""Train the multimodal ranker with Ray Train on the retriever's candidates.

``train_ranker(job)`` is the plain function behind ``raycart train ranker``:

1. the driver prepares what the ranker trains on, once (:mod:`training.jobs.ranker_data`): the
   retriever's top candidates for the validation users as hard negatives, by Ray Data batch
   inference, their dense features, the held-out users for early stopping, the funnel stages of
   typed events, the shown-slate lists of the feedback log, the frozen encoder bottoms when
   fine-tuning;
2. Ray Train ``TorchTrainer`` (DDP over ``workers``; example indices sharded per worker by Ray
   Data, the arrays shared through the object store), a checkpoint every epoch, resume after a
   worker dies or on a rerun (:func:`train_loop`, :mod:`training.jobs.loop`);
3. evaluate the two-stage pipeline (retrieve ``eval_candidates`` -> rank) on the test part next to
   the retriever alone, with the same harness as ``raycart evaluate``, and export a ranker
   directory that embeds its retriever and loads without Ray (:func:`export_ranker`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from training.evaluation.metrics import EvalConfig, evaluate
from training.inference.candidates import Candidates, catalogue_scores
from training.inference.features import attribute_vocabulary
from training.inference.modeldir import (
    ModelCard,
    Reranks,
    TrainedOn,
    dataset_fingerprint,
    read_state,
    save_model_dir,
)
from training.inference.pipeline import Pipeline
from training.jobs.loop import LoopSpec, RunSummary, SavedState, driver_dataset, fit, plot_learning_curve, run_epochs
from training.jobs.ranker_data import (
    HeldOut,
    RankerExamples,
    RankerInputs,
    RankerJob,
    candidate_generator,
    has_event_types,
    prepare_examples,
)
from training.models.encoders import ImageEncoder, TextEncoder
from training.models.ranker import Ranker, ranker_loss
from training.models.retriever import ItemFeatures
from training.models.state import component
from training.models.text_tuning import TunedImage, TunedText, trainable_params

if TYPE_CHECKING:
    from ray import ObjectRef

log = logging.getLogger(__name__)


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


def run_name(job: RankerJob) -> str:
    key = json.dumps({"data": str(job.data), "retriever": str(job.retriever), "scheme": job.scheme,
                      "model": job.model.to_dict(), "workers": job.workers, "knn": job.knn.__dict__,
                      "valid_fraction": job.valid_fraction, "text": job.text.__dict__ if job.text else None,
                      "image": job.image.__dict__ if job.image else None, "exposure": job.exposure},
                     sort_keys=True)
    return "ranker-" + hashlib.sha256(key.encode()).hexdigest()[:12]


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
    # warm starts: a fresh Adam at the full rate first moves a trained model by its noisiest steps;
    # the rate ramps up over job.warmup_steps optimiser steps (restarted on a resume)
    warmup = (torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / job.warmup_steps))
              if job.warmup_steps > 0 else None)
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
                if warmup is not None:
                    warmup.step()
                opt.zero_grad()
            total += loss.item()
            samples += len(b.items)
        return total / max(steps, 1), steps, samples

    def validate() -> float:
        return validation_ndcg(model, held)

    run_epochs(LoopSpec("ranker", cfg.epochs, cfg.patience, validate_start=inputs.init is not None), model, opt,
               train_epoch, validate)


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
    if held.weight is None:
        return evaluate(score, task, EvalConfig(ks=(10,), batch_size=512))["NDCG@10"]
    users: dict[str, np.ndarray] = {}
    evaluate(score, task, EvalConfig(ks=(10,), batch_size=512), per_user=users)  # the held-out users, in order
    return float(np.average(users["NDCG@10"], weights=held.weight))


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
    prepared = prepare_examples(job)
    n = len(prepared.examples)
    name = job.name or run_name(job)
    log.info(f"[ranker] Ray Train run '{name}': {n:,} training lists of {job.model.train_candidates} candidates, "
          f"{len(prepared.held.task.users):,} held-out users; rerunning the same job resumes it")
    init = None
    if job.init_from:  # the ranker's weights only, not the whole pipeline
        init = component(read_state(job.init_from), "ranker_weights", job.init_from)
        log.info(f"[ranker] warm start from {job.init_from}")
    worker = RankerWorkerInputs(job=job, examples=ray.put(prepared.examples), held=ray.put(prepared.held),
                                features=ray.put(prepared.features.arrays()), tuning=ray.put(prepared.tuning),
                                init=ray.put(init) if init is not None else None)
    saved = fit(train_loop, worker, name=name, storage_path=job.storage, workers=job.workers, use_gpu=job.use_gpu,
                max_failures=job.max_failures, placement=job.placement,
                datasets={"train": driver_dataset({"row": np.arange(n)})}, callbacks=callbacks)
    return export_ranker(job, prepared, saved, start)


def export_ranker(job: RankerJob, prepared: RankerInputs | None, saved: SavedState, start: float | None = None) -> dict:
    """Evaluate the best state of a run (``saved``: a checkpoint's ``state.pt``) as a two-stage
    pipeline and write the model directory ``job.out``; ``prepared``: from :func:`prepare_examples`
    (recomputed when None)."""
    start = time.time() if start is None else start
    prepared = prepared if prepared is not None else prepare_examples(job)
    ranker = Ranker(job.model, prepared.features, **_tuned_modules(job, prepared.tuning))
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
        exported = Ranker(job.model, prepared.features, tuned_table=tables.get("tuned_table"),
                          tuned_image_table=tables.get("tuned_image_table"))
        exported.load_state_dict({k: v for k, v in saved["best_model"].items()
                                  if not k.startswith(("tuned.", "tuned_image."))}, strict=False)
        for key, table in tables.items():
            getattr(exported, key).copy_(torch.from_numpy(table))
        ranker = exported
    test = prepared.test
    generator = candidate_generator(prepared.retriever, job.knn, test.train, prepared.prices, prepared.dataset.timestamps)
    vocab = attribute_vocabulary(prepared.dataset.items)[2]
    pipeline = Pipeline(generator, ranker, vocab, prepared.stages)
    t0 = time.time()
    two_stage = evaluate(pipeline.score, test)
    seconds_two_stage = time.time() - t0
    retrieval = evaluate(prepared.retriever.score, test)
    history = [dict(epoch) for epoch in saved["history"]]  # plain dicts for the card and the plot
    gain = two_stage["NDCG@10"] / max(retrieval["NDCG@10"], 1e-12) - 1
    run: RunSummary = {
        "model": "ranker", "data": job.data, "retriever": job.retriever, "scheme": job.scheme, "part": "test",
        "workers": job.workers, "gpu": job.use_gpu, "epochs": len(history),
        "epoch_numbers": [e["epoch"] for e in saved["history"]], "best_valid_NDCG@10": saved["best"],
        "ndcg10_gain_over_retriever": gain, "eval_seconds": round(seconds_two_stage, 1),
        "seconds": round(time.time() - start, 1), "resumes": saved.get("resumes", 0),
        "recent_popularity_days": generator.recent_days,
        "trainable_params": trainable}
    summary = {**two_stage, "retriever_only": retrieval, "run": run}
    config = {"ranker": job.model.to_dict(), "retriever": prepared.retriever_card.config, "knn": generator.knn.state()[0],
              "attribute_vocab": vocab}

    def extra(tmp: Path) -> None:
        (tmp / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
        (tmp / "history.json").write_text(json.dumps(history, indent=2) + "\n")
        plot_learning_curve(history, tmp / "learning_curve.png", "Ranker learning curve")

    retriever_card = prepared.retriever_card
    card = ModelCard(kind="ranker", config=config, num_items=prepared.dataset.num_items, metrics=two_stage,
                     retriever_only=retrieval, history=history, resumes=saved.get("resumes", 0),
                     encoders=retriever_card.encoders,
                     reranks=Reranks(path=job.retriever, metrics=retriever_card.metrics, trained_on=retriever_card.trained_on),
                     trained_on=TrainedOn(data=job.data, source=prepared.dataset.source, scheme=job.scheme,
                                          fingerprint=dataset_fingerprint(job.data)))
    save_model_dir(job.out, card, Pipeline.state(generator, ranker, prepared.retriever_state, prepared.stages),
                   overwrite=job.overwrite, extra=extra)
    log.info(f"[ranker] done in {summary['run']['seconds']:.0f}s: test NDCG@10 {two_stage['NDCG@10']:.4f} "
          f"HR@10 {two_stage['HR@10']:.4f} (retriever alone {retrieval['NDCG@10']:.4f} / {retrieval['HR@10']:.4f}, "
          f"{gain:+.1%}) -> {job.out}")
    return summary
