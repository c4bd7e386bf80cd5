"""Model directories: what training exports and what evaluation and serving load.

A model directory holds ``model.json`` (``kind``, its config, what it was trained on, its
metrics) and the kind's own files. ``load_model(dir)`` returns an object with
``score(users, history) -> (len(users), num_items) scores`` and needs no Ray. Kinds register
their loader in :data:`LOADERS` as ``"module:function"``.
"""

from __future__ import annotations

import importlib
import io
import json
import time

import numpy as np

from training import storage
from training.errors import DataError

MODEL_JSON = "model.json"
LOADERS = {
    "popularity": "training.baselines.popularity:Popularity.from_state",
    "itemknn": "training.baselines.itemknn:ItemKNN.from_state",
    "retriever": "training.models.retriever:RetrieverScorer.from_state",
    "ranker": "training.pipeline:TwoStageScorer.from_state",
}


def save_model_dir(uri: str, kind: str, config: dict, state: dict[str, np.ndarray], meta: dict,
                   overwrite: bool = False, extra=None) -> None:
    """Write ``model.json`` and ``state.npz`` atomically (``model.json`` last); ``extra(tmp)``
    may add files (an item-embedding table, plots)."""
    doc = {"kind": kind, "config": config, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           **meta}
    with storage.atomic_output_dir(uri, overwrite=overwrite, publish_last=MODEL_JSON) as tmp:
        np.savez(tmp / "state.npz", **state)
        if extra is not None:
            extra(tmp)
        (tmp / MODEL_JSON).write_text(json.dumps(doc, indent=2) + "\n")


def read_model_json(uri: str) -> dict:
    path = storage.join(uri, MODEL_JSON)
    if not storage.exists(path):
        raise DataError(f"{uri}: not a Raycart model directory (no {MODEL_JSON})")
    try:
        return json.loads(storage.read_bytes(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc


def load_model(uri: str, doc: dict | None = None):
    """Load the model in directory ``uri`` (local or S3) with its kind's loader; ``doc``: its
    ``model.json`` when the caller has read it already."""
    doc = doc if doc is not None else read_model_json(uri)
    kind = doc.get("kind")
    if kind not in LOADERS:
        raise DataError(f"{uri}: unknown model kind {kind!r} (known: {', '.join(LOADERS)})")
    module, _, attr = LOADERS[kind].partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj(doc.get("config", {}), read_state(uri))


def read_state(uri: str) -> dict[str, np.ndarray]:
    """The arrays of a model directory's ``state.npz``."""
    with np.load(io.BytesIO(storage.read_bytes(storage.join(uri, "state.npz")))) as npz:
        return {k: npz[k] for k in npz.files}
