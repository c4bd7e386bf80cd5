"""Model directories: what training exports and what evaluation and serving load.

A model directory holds its card, ``model.json`` (:class:`ModelCard`: format version, kind, the
kind's config, the data it was trained on with a fingerprint, its metrics and history), one
``state/<component>.npz`` per component of its state (:data:`training.models.state.ModelState`) and the kind's own
files (an item-embedding table, plots). ``load_model(dir)`` returns an object with
``score(users, history) -> (len(users), num_items) scores`` and needs no Ray. Each kind's loader is
registered in :data:`training.models.kinds.KINDS` (``"module:function"``, taking ``(config, state)``).

Loading is strict: a card of another format version, with unknown or missing fields, or a state
missing a component, is a :class:`~training.common.errors.DataError` that says what to do.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from training.common import storage
from training.common.errors import DataError
from training.models.kinds import KINDS
from training.models.state import ModelState

FORMAT_VERSION = 2
MODEL_JSON = "model.json"
STATE_DIR = "state"

# A model's state: named components (the retriever's weights, its item features, the kNN table,
# ...), each a set of arrays; saved as one ``state/<component>.npz`` each.


@dataclass(frozen=True)
class TrainedOn:
    """The data a model was fitted on: where, which source, which split scheme, and the
    fingerprint of its ``dataset.json`` (:func:`dataset_fingerprint`)."""

    data: str
    source: str
    scheme: str
    fingerprint: str | None = None
    part: str | None = None


@dataclass(frozen=True)
class Reranks:
    """For a ranker: the retriever directory whose candidates it reorders, and what it scored."""

    path: str
    metrics: dict[str, Any] | None = None
    trained_on: TrainedOn | None = None


@dataclass(frozen=True)
class ModelCard:
    """``model.json``: what a model directory holds (see the module docstring)."""

    kind: str
    config: dict[str, Any]
    num_items: int
    trained_on: TrainedOn
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    resumes: int = 0
    # the frozen encoders behind the item features ({"text": config or None, "image": ...}):
    # serving embeds new items with them
    encoders: dict[str, Any] = field(default_factory=lambda: {"text": None, "image": None})
    reranks: Reranks | None = None
    retriever_only: dict[str, Any] | None = None  # a ranker's retriever scored alone on its test split
    created: str = ""
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, doc: Any, where: str = MODEL_JSON) -> ModelCard:
        if not isinstance(doc, dict):
            raise DataError(f"{where}: a model card is a JSON object, got {type(doc).__name__}")
        version = doc.get("format_version", 1)
        if version != FORMAT_VERSION:
            raise DataError(f"{where}: model format version {version}, this Raycart reads version "
                            f"{FORMAT_VERSION}; retrain the model with this version (or load it with the "
                            f"Raycart that wrote it)")
        try:
            return _typed(cls, doc, where)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{where}: {exc}") from exc


def _typed(cls, doc: dict, where: str):
    """``cls(**doc)`` with nested dataclasses built and unknown or missing fields named."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(doc) - set(names))
    if unknown:
        raise DataError(f"{where}: unknown field(s) {', '.join(unknown)} in {cls.__name__}")
    required = [n for n, f in names.items()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [n for n in required if n not in doc]
    if missing:
        raise DataError(f"{where}: {cls.__name__} is missing field(s) {', '.join(missing)}")
    nested = {"trained_on": TrainedOn, "reranks": Reranks}
    kwargs = {}
    for key, value in doc.items():
        if key in nested and isinstance(value, dict):
            value = _typed(nested[key], value, f"{where}: {key}")
        kwargs[key] = value
    return cls(**kwargs)


def dataset_fingerprint(data: str) -> str | None:
    """The first 16 hex digits of the SHA-256 of a dataset's ``dataset.json`` (it records the
    source, counts, splits and creation time); None where there is none."""
    path = storage.join(data, "dataset.json")
    if not storage.exists(path):
        return None
    return hashlib.sha256(storage.read_bytes(path)).hexdigest()[:16]


def save_model_dir(uri: str, card: ModelCard, state: ModelState, overwrite: bool = False, extra=None) -> None:
    """Write the card and the state atomically (``model.json`` last); ``extra(tmp)`` may add
    files (an item-embedding table, plots)."""
    if not card.created:
        card = dataclasses.replace(card, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    with storage.atomic_output_dir(uri, overwrite=overwrite, publish_last=MODEL_JSON) as tmp:
        (tmp / STATE_DIR).mkdir()
        for component, arrays in state.items():
            # allow_pickle named (numpy's default) so that **arrays cannot fill it, as the stub requires
            np.savez(tmp / STATE_DIR / f"{component}.npz", allow_pickle=True, **arrays)
        if extra is not None:
            extra(tmp)
        (tmp / MODEL_JSON).write_text(json.dumps(card.to_dict(), indent=2) + "\n")


def read_card(uri: str) -> ModelCard:
    """The :class:`ModelCard` of model directory ``uri`` (local or S3)."""
    path = storage.join(uri, MODEL_JSON)
    if not storage.exists(path):
        raise DataError(f"{uri}: not a Raycart model directory (no {MODEL_JSON})")
    try:
        fields = json.loads(storage.read_bytes(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc
    return ModelCard.from_dict(fields, str(path))


def load_model(uri: str, card: ModelCard | None = None):
    """Load the model in directory ``uri`` (local or S3) with its kind's loader; ``card``: its
    card when the caller has read it already."""
    card = card if card is not None else read_card(uri)
    if card.kind not in KINDS:
        raise DataError(f"{uri}: unknown model kind {card.kind!r} (known: {', '.join(KINDS)})")
    return KINDS[card.kind].loader()(card.config, read_state(uri))


def read_state(uri: str) -> ModelState:
    """The components of a model directory's state (``state/*.npz``)."""
    root = storage.join(uri, STATE_DIR)
    fs, path = storage.resolve(root)
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    names = sorted(i.base_name[:-4] for i in infos if i.base_name.endswith(".npz"))
    if not names:
        raise DataError(f"{uri}: no model state ({STATE_DIR}/*.npz)")
    state: ModelState = {}
    for name in names:
        with np.load(io.BytesIO(storage.read_bytes(storage.join(root, f"{name}.npz")))) as npz:
            state[name] = {k: npz[k] for k in npz.files}
    return state
