"""Amazon review sequences as preprocessed by S3-Rec (Zhou et al., CIKM 2020).

Input ``X.txt``: one line per user, ``user item item ...`` in time order, ids 1..N. Beside it,
``X_item2attributes.json`` maps item id -> attribute ids (brand, category path). The files
carry order but no timestamps: event times are the position in the user's sequence (seconds
after the epoch), so leave-one-out is exact and a global time split is not meaningful. The
dataset says so (``timestamps="position"`` in its manifest), and whatever needs a clock -- the
ranker's recent popularity -- is off on it.
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath

import numpy as np
import pyarrow as pa

from training.common import storage
from training.common.errors import DataError
from training.data.dataset import Dataset
from training.data.sources import Prepared


def _attributes_path(input_uri: str) -> str:
    name = PurePosixPath(str(input_uri)).name
    stem = name[:-4] if name.endswith(".txt") else name
    return str(input_uri)[: len(str(input_uri)) - len(name)] + f"{stem}_item2attributes.json"


def parse_sequences(text: str, where: str) -> tuple[list[str], list[list[int]]]:
    users, seqs = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2:
            raise DataError(f"{where}:{lineno}: expected 'user item [item ...]', got {line[:60]!r}")
        try:
            seqs.append([int(p) for p in parts[1:]])
        except ValueError:
            bad = next(p for p in parts[1:] if not p.lstrip("-").isdigit())
            raise DataError(f"{where}:{lineno}: item id {bad!r} is not an integer") from None
        users.append(parts[0])
    if not seqs:
        raise DataError(f"{where}: no sequences (empty file)")
    return users, seqs


def prepare(input: str, attributes: str | None = None) -> Prepared:
    storage.require_file(input, "sequence file")
    raw = storage.read_bytes(input).decode("utf-8", errors="replace")
    ext_users, seqs = parse_sequences(raw, input)
    attr_path = attributes or _attributes_path(input)
    item2attr = {}
    if storage.exists(attr_path):
        try:
            item2attr = json.loads(storage.read_bytes(attr_path))
        except json.JSONDecodeError as exc:
            raise DataError(f"{attr_path}: not valid JSON ({exc})") from exc
    report = [f"read {len(seqs):,} user sequences from {input}"]
    if not item2attr:
        report.append(f"no attribute file at {attr_path}; items get no attributes")

    ext_items = np.unique(np.concatenate([np.asarray(s, dtype=np.int64) for s in seqs]))
    index = {int(e): i for i, e in enumerate(ext_items)}
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    user_ids = np.repeat(np.arange(len(seqs), dtype=np.int64), lengths)
    item_ids = np.array([index[i] for s in seqs for i in s], dtype=np.int64)
    position = np.arange(len(item_ids)) - np.repeat(np.cumsum(lengths) - lengths, lengths)

    items = pa.table({
        "item_id": np.arange(len(ext_items), dtype=np.int64),
        "external_id": [str(e) for e in ext_items],
        "attributes": [[f"attr_{a}" for a in item2attr.get(str(e), [])] for e in ext_items],
    })
    users = pa.table({"user_id": np.arange(len(seqs), dtype=np.int64), "external_id": ext_users})
    events = pa.table({
        "user_id": user_ids,
        "item_id": item_ids,
        "timestamp": pa.array(position * 1_000_000, type=pa.timestamp("us", tz="UTC")),
        "event_type": pa.array(["purchase"] * len(item_ids), type=pa.string()),
        "seq": np.arange(len(item_ids), dtype=np.int64),
    })
    name = PurePosixPath(str(input)).name.removesuffix(".txt")
    ds = Dataset(items=items, users=users, events=events, source=f"amazon:{name}",
                 splits={"loo": {"kind": "loo", "dedupe": False}},
                 notes={"timestamps": "sequence positions; the source has order only",
                        "event_type": "reviews, stored as purchases"},
                 timestamps="position")
    return Prepared(ds, report=report)
