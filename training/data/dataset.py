"""A canonical dataset directory: ``dataset.json`` + ``items/users/events[/bandit].parquet``.

Layout (local path or ``s3://`` prefix)::

    DIR/dataset.json       manifest: format version, source, counts, split definitions, notes,
                           what the timestamps are (``timestamps``: time or position)
    DIR/items.parquet      schema.ITEMS
    DIR/users.parquet      schema.USERS
    DIR/events.parquet     schema.EVENTS, sorted by (user_id, timestamp, seq)
    DIR/bandit.parquet     schema.BANDIT (only for logged-bandit sources)
    DIR/images/...         item images referenced by items.image (relative paths)

The manifest is written last, so a directory without it is not a dataset. Both writing and
reading validate the schema; errors name the file and the column.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from training.common import storage
from training.common.errors import DataError
from training.data import schema
from training.data.interactions import Interactions

FORMAT_VERSION = 1
MANIFEST = "dataset.json"


@dataclass
class Dataset:
    """In-memory canonical dataset. ``tables`` holds pyarrow tables keyed by table name."""

    items: pa.Table
    users: pa.Table
    events: pa.Table
    bandit: pa.Table | None = None
    source: str = "unknown"
    splits: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)
    timestamps: schema.TimestampKind = "time"  # "position": sequence positions, not times (schema.TimestampKind)
    root: str | None = None  # where it was loaded from (resolves relative image paths)

    @property
    def num_items(self) -> int:
        return self.items.num_rows

    @property
    def num_users(self) -> int:
        return self.users.num_rows

    def tables(self) -> dict[str, pa.Table]:
        out = {"items": self.items, "users": self.users, "events": self.events}
        if self.bandit is not None:
            out["bandit"] = self.bandit
        return out

    def counts(self) -> dict[str, int]:
        out = {"users": self.num_users, "items": self.num_items, "events": self.events.num_rows}
        if self.events.num_rows:
            for kind, n in zip(*np.unique(self.events["event_type"].to_numpy(zero_copy_only=False),
                                          return_counts=True)):
                out[f"events_{kind}"] = int(n)
        if self.bandit is not None:
            out["bandit_rounds"] = self.bandit.num_rows
        return out

    def interactions(self, event_types: tuple[str, ...] | None = None,
                     dedupe: bool = False) -> Interactions:
        """Each user's items in time order (ties by ``seq``), as CSR :class:`Interactions`.

        Args:
            event_types: keep only these event kinds (``None`` keeps all).
            dedupe: keep only a user's first interaction with each item, so every later
                target is an item new to the user (the protocol excludes history items).
        """
        ev = self.events
        if event_types is not None:
            ev = ev.filter(pc.is_in(ev["event_type"], pa.array(list(event_types))))
        users = ev["user_id"].to_numpy()
        items = ev["item_id"].to_numpy()
        ts = ev["timestamp"].cast(pa.int64()).to_numpy()
        seq = ev["seq"].to_numpy()
        return Interactions.from_events(users, items, ts, seq, self.num_users, self.num_items,
                                        dedupe=dedupe)


def _manifest(ds: Dataset) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "source": ds.source,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "counts": ds.counts(),
        "splits": ds.splits,
        "notes": ds.notes,
        "timestamps": ds.timestamps,
        "tables": sorted(ds.tables()),
    }


def save_dataset(ds: Dataset, uri: str, *, overwrite: bool = False,
                 extra: Callable[[Path], None] | None = None) -> dict:
    """Validate ``ds`` and write it atomically to ``uri``. Returns the manifest.

    Args:
        extra: called with the temporary directory before publishing, to add files such as
            ``images/``; if it raises, nothing is published.
    """
    tables = {name: schema.conform(t, name, f"{ds.source}:{name}") for name, t in ds.tables().items()}
    tables["events"] = tables["events"].sort_by(
        [("user_id", "ascending"), ("timestamp", "ascending"), ("seq", "ascending")])
    schema.validate(tables, ds.source)
    schema.check_timestamp_kind(ds.timestamps, ds.source)
    manifest = _manifest(ds)
    with storage.atomic_output_dir(uri, overwrite=overwrite, publish_last=MANIFEST) as tmp:
        for name, table in tables.items():
            pq.write_table(table, tmp / f"{name}.parquet", compression="zstd")
        if extra is not None:
            extra(tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(uri: str) -> dict:
    path = storage.join(uri, MANIFEST)
    if not storage.exists(path):
        if not storage.exists(uri):
            raise DataError(f"{uri}: no such dataset directory")
        raise DataError(f"{uri}: not a Raycart dataset (no {MANIFEST}; "
                        f"create one with 'raycart data prepare')")
    try:
        manifest = json.loads(storage.read_bytes(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{path}: format_version {manifest.get('format_version')!r} is not "
                        f"supported (expected {FORMAT_VERSION})")
    return manifest


def manifest_timestamps(manifest: dict, where: str) -> schema.TimestampKind:
    """What the dataset's timestamps are (:data:`schema.TimestampKind`). A manifest written before
    the field existed has none: ``position`` for the Amazon source (order only), else ``time``."""
    if "timestamps" not in manifest:
        return "position" if str(manifest.get("source", "")).startswith("amazon:") else "time"
    return schema.check_timestamp_kind(manifest["timestamps"], where)


def read_table(uri: str, name: str) -> pa.Table:
    path = storage.join(uri, f"{name}.parquet")
    storage.require_file(path, f"{name} table")
    fs, fs_path = storage.resolve(path)
    try:
        table = pq.read_table(fs_path, filesystem=fs)
    except pa.ArrowInvalid as exc:
        raise DataError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from exc
    except OSError as exc:
        raise storage.describe_error(exc, path) from exc
    return schema.conform(table, name, path)


def load_dataset(uri: str) -> Dataset:
    """Read and validate a dataset written by :func:`save_dataset` (local path or S3)."""
    uri = str(uri)
    manifest = read_manifest(uri)
    tables = {name: read_table(uri, name) for name in manifest["tables"]}
    schema.validate(tables, uri)
    return Dataset(items=tables["items"], users=tables["users"], events=tables["events"],
                   bandit=tables.get("bandit"), source=manifest.get("source", "unknown"),
                   splits=manifest.get("splits", {}), notes=manifest.get("notes", {}),
                   timestamps=manifest_timestamps(manifest, storage.join(uri, MANIFEST)), root=uri)
