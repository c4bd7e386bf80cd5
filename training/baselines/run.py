"""Fit a baseline (popularity, item-kNN) on a split's training part and evaluate it; optionally
save it as a model directory."""

from __future__ import annotations

import time

from training.baselines.itemknn import ItemKNN, ItemKNNConfig
from training.baselines.popularity import Popularity
from training.common.errors import DataError
from training.evaluation.metrics import EvalConfig, evaluate
from training.evaluation.run import split_task, write_json
from training.inference.modeldir import ModelCard, TrainedOn, dataset_fingerprint, save_model_dir

BASELINES = ("pop", "itemknn")


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
    ds, task = split_task(data, scheme, part)
    start = time.time()
    fitted: Popularity | ItemKNN
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
