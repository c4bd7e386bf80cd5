"""Any shop's own export: an events table plus an optional items table (CSV or Parquet).

Events need ``user_id``, ``item_id`` and ``timestamp`` (ISO date-time or seconds since the
epoch); ``event_type`` (view/click/cart/purchase, default ``--default-event-type``) and
``value`` are optional. Items may have ``item_id``, ``title``, ``description``, ``category``,
``brand``, ``price``, ``image`` (a path relative to the items file, an absolute path or a URI)
and any other columns, which become ``column=value`` attributes.

Ids must be integers unless ``string_ids`` is set: a stray text value in an id column is
almost always a column mix-up, so it is reported rather than silently mapped.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import pyarrow as pa

from training.common import storage
from training.common.errors import DataError
from training.data.dataset import Dataset
from training.data.schema import EVENT_TYPES
from training.data.sources import Prepared
from training.data.tabular import read_tabular, require_columns

ITEM_FIELDS = ("title", "description", "category", "brand", "price", "image")


def _ids(col: pd.Series, name: str, where: str, string_ids: bool) -> pd.Series:
    if col.isna().any():
        row = int(np.flatnonzero(col.isna().to_numpy())[0])
        raise DataError(f"{where}: column '{name}' is empty in row {row + 2}")
    if string_ids:
        return col.astype(str).str.strip()
    if pd.api.types.is_float_dtype(col):
        if not np.all(np.mod(col.to_numpy(), 1) == 0):
            raise DataError(f"{where}: column '{name}' has non-integer ids (e.g. {col[np.mod(col, 1) != 0].iloc[0]})")
        return col.astype(np.int64).astype(str)
    if pd.api.types.is_integer_dtype(col):
        return col.astype(str)
    text = col.astype(str).str.strip()
    bad = ~text.str.fullmatch(r"-?\d+")
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{where}: column '{name}' has a non-numeric id {text.iloc[row]!r} in row "
                        f"{row + 2} (pass --string-ids if your ids are text)")
    return text.astype(np.int64).astype(str)


def _timestamps(col: pd.Series, where: str) -> pd.Series:
    if pd.api.types.is_numeric_dtype(col):
        ts = pd.to_datetime(col, unit="s", utc=True, errors="coerce")
    else:
        text = col.astype(str).str.strip()
        numeric = text.str.fullmatch(r"\d+(\.\d+)?")
        ts = pd.to_datetime(text.where(~numeric), utc=True, errors="coerce", format="mixed")
        if numeric.any():  # epoch seconds mixed with dates
            ts[numeric] = pd.to_datetime(text[numeric].astype(float), unit="s", utc=True)
    if ts.isna().any():
        row = int(np.flatnonzero(ts.isna().to_numpy())[0])
        raise DataError(f"{where}: column 'timestamp' has a value that is not a date in row {row + 2}: "
                        f"{col.iloc[row]!r}")
    return ts


def _image_uri(value, items_uri: str) -> str | None:
    """An image path relative to the items file becomes absolute (or a full S3 URI)."""
    if not isinstance(value, str) or not value.strip():
        return None
    if "://" in value or value.startswith("/"):
        return value
    if storage.is_s3(items_uri):
        return str(PurePosixPath(items_uri[len("s3://"):]).parent.joinpath(value)).join(["s3://", ""])
    return str(Path(items_uri).absolute().parent / value)


def prepare(input: str, items: str | None = None, string_ids: bool = False,
            default_event_type: str = "click") -> Prepared:
    if default_event_type not in EVENT_TYPES:
        raise DataError(f"--default-event-type: '{default_event_type}' is not one of {', '.join(EVENT_TYPES)}")
    ev = read_tabular(input, what="events table")
    require_columns(ev, ["user_id", "item_id", "timestamp"], input)
    df = ev.to_pandas()
    users_ext = _ids(df["user_id"], "user_id", input, string_ids)
    items_ext = _ids(df["item_id"], "item_id", input, string_ids)
    ts = _timestamps(df["timestamp"], input)
    kinds = (df["event_type"].astype(str).str.strip().str.lower() if "event_type" in df
             else pd.Series([default_event_type] * len(df)))
    bad = ~kinds.isin(EVENT_TYPES)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{input}: column 'event_type' has {kinds.iloc[row]!r} in row {row + 2} "
                        f"(expected one of {', '.join(EVENT_TYPES)})")
    value = pd.to_numeric(df["value"], errors="coerce") if "value" in df else None

    meta = None
    if items:
        it = read_tabular(items, what="items table")
        require_columns(it, ["item_id"], items)
        meta = it.to_pandas()
        meta["item_id"] = _ids(meta["item_id"], "item_id", items, string_ids)
        if meta["item_id"].duplicated().any():
            raise DataError(f"{items}: item_id {meta.loc[meta['item_id'].duplicated(), 'item_id'].iloc[0]!r} "
                            f"appears more than once")
        meta = meta.set_index("item_id")

    all_items = pd.unique(pd.concat([items_ext, pd.Series(meta.index if meta is not None else [], dtype=str)]))
    all_items = np.array(sorted(all_items, key=(lambda v: v) if string_ids else int))
    item_index = pd.Series(np.arange(len(all_items)), index=all_items)
    all_users = pd.unique(users_ext)
    all_users = np.array(sorted(all_users, key=(lambda v: v) if string_ids else int))
    user_index = pd.Series(np.arange(len(all_users)), index=all_users)

    cols = {"item_id": np.arange(len(all_items), dtype=np.int64), "external_id": all_items.tolist()}
    if items and meta is not None:  # meta comes from the items table
        meta = meta.reindex(all_items)
        for field in ITEM_FIELDS:
            if field in meta:
                values = meta[field]
                if field == "price":
                    cols[field] = pa.array(pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64),
                                           from_pandas=True)
                elif field == "image":
                    cols[field] = [_image_uri(v, items) for v in values]
                else:
                    cols[field] = [v if isinstance(v, str) else (None if pd.isna(v) else str(v)) for v in values]
        extra = [c for c in meta.columns if c not in ITEM_FIELDS]
        cols["attributes"] = [[f"{c}={row[c]}" for c in extra if pd.notna(row[c])]
                              for row in meta[extra].to_dict("records")] if extra else None
        if cols["attributes"] is None:
            del cols["attributes"]
    order = np.arange(len(df))
    columns = {
        "user_id": user_index.reindex(users_ext).to_numpy(dtype=np.int64),
        "item_id": item_index.reindex(items_ext).to_numpy(dtype=np.int64),
        "timestamp": pa.array(ts.dt.tz_convert(None).to_numpy(dtype="datetime64[us]")).cast(pa.timestamp("us", tz="UTC")),
        "event_type": kinds.tolist(),
        "seq": order.astype(np.int64),
    }
    if value is not None:
        columns["value"] = pa.array(value.to_numpy(dtype=np.float64), from_pandas=True)
    events = pa.table(columns)
    report = [f"{len(df):,} events, {len(all_users):,} users, {len(all_items):,} items"
              + (f" ({len(meta):,} described in {items})" if meta is not None else "")]
    ds = Dataset(items=pa.table(cols), users=pa.table({"user_id": np.arange(len(all_users), dtype=np.int64),
                                                       "external_id": [str(u) for u in all_users]}),
                 events=events, source="generic",
                 splits={"loo": {"kind": "loo"}, "time": {"kind": "time"}, "cold": {"kind": "cold"}})
    return Prepared(ds, report=report)
