"""Ray Data readers for the canonical tables, for distributed training ingest and batch
inference. Ray is imported when a reader is called, not when this module is imported.

Example: ``read_events("s3://bucket/shop").map_batches(fn)`` streams the events table.
"""

from __future__ import annotations

from training.common import storage
from training.common.errors import DataError
from training.data import schema
from training.data.dataset import read_manifest


def read_table(dataset_uri: str, table: str, columns: list[str] | None = None, **read_kwargs):
    """A ``ray.data.Dataset`` over one table (``items``, ``users``, ``events``, ``bandit``) of a
    Raycart dataset on local disk or S3. The manifest is checked first, so a half-written or
    foreign directory fails with a clear message instead of inside a Ray task."""
    import ray.data

    manifest = read_manifest(dataset_uri)
    if table not in manifest.get("tables", []):
        raise DataError(f"{dataset_uri}: has no '{table}' table (has: {', '.join(manifest.get('tables', []))})")
    if columns:
        unknown = [c for c in columns if c not in schema.TABLES[table].names]
        if unknown:
            raise DataError(f"{dataset_uri}/{table}: unknown column(s) {unknown}")
    fs, path = storage.resolve(storage.join(dataset_uri, f"{table}.parquet"))
    ds = ray.data.read_parquet(path, filesystem=fs, **read_kwargs)
    return ds.select_columns(columns) if columns else ds


def read_events(dataset_uri: str, **kwargs):
    return read_table(dataset_uri, "events", **kwargs)


def read_items(dataset_uri: str, **kwargs):
    return read_table(dataset_uri, "items", **kwargs)
