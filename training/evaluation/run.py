"""Evaluate a model directory on a dataset split; write JSON (baselines: :mod:`training.baselines.run`)."""

from __future__ import annotations

import json
import time

from training.common import storage
from training.common.errors import DataError
from training.data.dataset import load_dataset
from training.data.splits import build_split, split_from_manifest
from training.evaluation.metrics import EvalConfig, evaluate
from training.inference.modeldir import load_model, read_card


def write_json(obj: dict, uri: str) -> None:
    """Write ``obj`` as JSON to a local path or S3 URI (local: via a temp file + rename)."""
    storage.atomic_write(uri, (json.dumps(obj, indent=2) + "\n").encode())


def split_task(data: str, scheme: str, part: str):
    """The dataset and its evaluation task for split ``scheme``, part ``part`` (valid/test)."""
    ds = load_dataset(data)
    if ds.events.num_rows == 0:
        raise DataError(f"{data}: no interaction events to evaluate on (logged-bandit data is "
                        f"evaluated off-policy, not by ranking)")
    spec = split_from_manifest(ds, scheme)
    return ds, build_split(ds, spec, part, name=scheme)


def evaluate_model_dir(data: str, model_dir: str, scheme: str = "loo", part: str = "test",
                       out: str | None = None, eval_config: EvalConfig = EvalConfig(),
                       per_user: dict | None = None) -> dict:
    """Evaluate the model in ``model_dir`` on a split of ``data`` (``per_user``: see
    :func:`~training.evaluation.metrics.evaluate`)."""
    card = read_card(model_dir)
    ds, task = split_task(data, scheme, part)
    if card.num_items != ds.num_items:
        raise DataError(f"{model_dir}: model scores {card.num_items} items but {data} has "
                        f"{ds.num_items}; was it trained on another dataset?")
    model = load_model(model_dir, card)
    start = time.time()
    metrics = evaluate(model.score, task, eval_config, per_user=per_user)
    result = {**metrics, "run": {"model": card.kind, "model_dir": str(model_dir), "data": str(data),
                                 "source": ds.source, "scheme": scheme, "part": part, "split": task.info,
                                 "seconds": round(time.time() - start, 3)}}
    if out:
        write_json(result, out)
    return result


def format_metrics(metrics: dict, keys=("HR@10", "NDCG@10", "HR@20", "NDCG@20", "MRR", "Coverage@10")) -> str:
    return "  ".join(f"{k} {metrics[k]:.4f}" for k in keys if k in metrics)
