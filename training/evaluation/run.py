"""Evaluate a model directory or fit-and-evaluate a baseline on a dataset split; write JSON."""

from __future__ import annotations

import json
import time

from training import storage
from training.baselines.itemknn import ItemKNN, ItemKNNConfig
from training.baselines.popularity import Popularity
from training.data.dataset import load_dataset
from training.data.splits import build_split, split_from_manifest
from training.errors import DataError
from training.evaluation.metrics import EvalConfig, evaluate
from training.modeldir import ModelCard, TrainedOn, dataset_fingerprint, load_model, read_card, save_model_dir

BASELINES = ("pop", "itemknn")


def write_json(obj: dict, uri: str) -> None:
    """Write ``obj`` as JSON to a local path or S3 URI (local: via a temp file + rename)."""
    storage.write_file(uri, (json.dumps(obj, indent=2) + "\n").encode())


def _task(data: str, scheme: str, part: str):
    ds = load_dataset(data)
    if ds.events.num_rows == 0:
        raise DataError(f"{data}: no interaction events to evaluate on (logged-bandit data is "
                        f"evaluated off-policy, not by ranking)")
    spec = split_from_manifest(ds, scheme)
    return ds, build_split(ds, spec, part, name=scheme)


def run_baseline(data: str, model: str, scheme: str = "loo", part: str = "test", out: str | None = None,
                 save: str | None = None, pop_scope: str = "train",
                 knn: ItemKNNConfig = ItemKNNConfig(), eval_config: EvalConfig = EvalConfig()) -> dict:
    """Fit baseline ``model`` (``pop`` or ``itemknn``) on the split's training part and evaluate.

    Args:
        pop_scope: ``train`` counts popularity over what precedes the targets; ``all`` over
            every interaction, targets included (how the S3-Rec paper's PopRec row is computed).
    """
    if model not in BASELINES:
        raise DataError(f"--model: unknown baseline '{model}' (expected one of {', '.join(BASELINES)})")
    if pop_scope not in ("train", "all"):
        raise DataError(f"--pop-scope: expected 'train' or 'all', got '{pop_scope}'")
    ds, task = _task(data, scheme, part)
    start = time.time()
    if model == "pop":
        fitted = Popularity().fit(task.full if pop_scope == "all" else task.train)
    else:
        fitted = ItemKNN(knn).fit(task.train)
    fit_s = time.time() - start
    metrics = evaluate(fitted.score, task, eval_config)
    result = {**metrics, "run": {
        "model": model, "data": str(data), "source": ds.source, "scheme": scheme, "part": part,
        "split": task.info, "fit_seconds": round(fit_s, 3),
        "seconds": round(time.time() - start, 3),
        **({"pop_scope": pop_scope} if model == "pop" else {"config": knn.__dict__})}}
    if out:
        write_json(result, out)
    if save:
        config, state = fitted.state()
        card = ModelCard(kind="popularity" if model == "pop" else "itemknn", config=config, num_items=ds.num_items,
                         trained_on=TrainedOn(data=str(data), source=ds.source, scheme=scheme, part=part,
                                              fingerprint=dataset_fingerprint(str(data))), metrics=metrics)
        save_model_dir(save, card, state, overwrite=True)
    return result


def evaluate_model_dir(data: str, model_dir: str, scheme: str = "loo", part: str = "test",
                       out: str | None = None, eval_config: EvalConfig = EvalConfig()) -> dict:
    """Evaluate the model in ``model_dir`` on a split of ``data``."""
    card = read_card(model_dir)
    ds, task = _task(data, scheme, part)
    if card.num_items != ds.num_items:
        raise DataError(f"{model_dir}: model scores {card.num_items} items but {data} has "
                        f"{ds.num_items}; was it trained on another dataset?")
    model = load_model(model_dir, card)
    start = time.time()
    metrics = evaluate(model.score, task, eval_config)
    result = {**metrics, "run": {"model": card.kind, "model_dir": str(model_dir), "data": str(data),
                                 "source": ds.source, "scheme": scheme, "part": part, "split": task.info,
                                 "seconds": round(time.time() - start, 3)}}
    if out:
        write_json(result, out)
    return result


def format_metrics(metrics: dict, keys=("HR@10", "NDCG@10", "HR@20", "NDCG@20", "MRR", "Coverage@10")) -> str:
    return "  ".join(f"{k} {metrics[k]:.4f}" for k in keys if k in metrics)
