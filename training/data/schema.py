"""The canonical Raycart tables and their validation.

Every source converter produces these tables; every model, baseline and split reads them.
Ids are dense integers (``0..N-1``) so they index embedding tables and score vectors directly;
the id the source used is kept in ``external_id``.

``items``   one row per catalogue item (text, attributes, image, price).
``users``   one row per user (optional attributes such as a planted taste or a segment).
``events``  one row per interaction: who, what, when, which kind, and an optional value
            (quantity, price or rating). ``seq`` orders events that share a timestamp
            (items of one invoice) by their position in the source.
``bandit``  optional: logged bandit feedback (Open Bandit Dataset): shown item, slot, click,
            the logging policy's propensity, and the context it saw.
"""

from __future__ import annotations

from typing import Literal, get_args

import pyarrow as pa
import pyarrow.compute as pc

from training.common.errors import DataError

EVENT_TYPES = ("view", "click", "cart", "purchase")

# What ``events.timestamp`` holds (the manifest's ``timestamps``): ``time`` -- when the event
# happened (UTC); ``position`` -- its index in the user's own sequence, stored as seconds after the
# epoch, for sources that carry order but no times (the Amazon files). Positions order one user's
# events; they are not comparable across users, so nothing that needs a clock (a window of days,
# a global time split) can use them.
TimestampKind = Literal["time", "position"]
TIMESTAMP_KINDS: tuple[str, ...] = get_args(TimestampKind)

ITEMS = pa.schema([
    pa.field("item_id", pa.int64(), nullable=False),
    pa.field("external_id", pa.string(), nullable=False),
    pa.field("title", pa.string()),
    pa.field("description", pa.string()),
    pa.field("category", pa.string()),
    pa.field("brand", pa.string()),
    pa.field("attributes", pa.list_(pa.string())),
    pa.field("price", pa.float64()),
    pa.field("image", pa.string()),
])

USERS = pa.schema([
    pa.field("user_id", pa.int64(), nullable=False),
    pa.field("external_id", pa.string(), nullable=False),
    pa.field("attributes", pa.list_(pa.string())),
])

EVENTS = pa.schema([
    pa.field("user_id", pa.int64(), nullable=False),
    pa.field("item_id", pa.int64(), nullable=False),
    pa.field("timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("event_type", pa.string(), nullable=False),
    pa.field("value", pa.float64()),
    pa.field("seq", pa.int64(), nullable=False),
])

BANDIT = pa.schema([
    pa.field("round_id", pa.int64(), nullable=False),
    pa.field("timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("item_id", pa.int64(), nullable=False),
    pa.field("position", pa.int32(), nullable=False),
    pa.field("click", pa.int8(), nullable=False),
    pa.field("propensity", pa.float64(), nullable=False),
    pa.field("policy", pa.string(), nullable=False),
    pa.field("campaign", pa.string(), nullable=False),
    pa.field("user_features", pa.list_(pa.string())),
    pa.field("affinity", pa.list_(pa.float32())),
])

TABLES = {"items": ITEMS, "users": USERS, "events": EVENTS, "bandit": BANDIT}


def conform(table: pa.Table, name: str, where: str) -> pa.Table:
    """Check ``table`` against the canonical schema ``name`` and cast it to that schema.

    Missing optional columns are added as nulls; missing required columns, extra columns that
    cannot be cast, and nulls in required columns raise :class:`DataError` naming ``where``
    (a file or table) and the column.
    """
    schema = TABLES[name]
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            if not field.nullable:
                raise DataError(f"{where}: missing required column '{field.name}' "
                                f"(has: {', '.join(table.column_names) or 'none'})")
            columns.append(pa.nulls(table.num_rows, type=field.type))
            continue
        col = table.column(field.name)
        if not col.type.equals(field.type):
            try:
                col = col.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise DataError(f"{where}: column '{field.name}' has type {col.type}, "
                                f"expected {field.type} ({str(exc).splitlines()[0]})") from exc
        if not field.nullable and col.null_count:
            raise DataError(f"{where}: column '{field.name}' has {col.null_count} empty values")
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=schema)


def check_timestamp_kind(value, where: str) -> TimestampKind:
    """``value`` if it is one of :data:`TIMESTAMP_KINDS`, else a :class:`DataError` naming ``where``."""
    if value not in TIMESTAMP_KINDS:
        raise DataError(f"{where}: 'timestamps' is {value!r}; expected one of {list(TIMESTAMP_KINDS)}")
    return value


def _check_dense_ids(col: pa.ChunkedArray, where: str, name: str) -> int:
    n = len(col)
    if n == 0:
        return 0
    lo, hi = pc.min(col).as_py(), pc.max(col).as_py()
    if lo != 0 or hi != n - 1 or pc.count_distinct(col).as_py() != n:
        raise DataError(f"{where}: '{name}' must be the dense ids 0..{n - 1} "
                        f"(found min {lo}, max {hi}, {pc.count_distinct(col).as_py()} distinct)")
    return n


def validate(tables: dict[str, pa.Table], where: str) -> None:
    """Cross-table checks: dense ids, events refer to known users/items, known event types."""
    n_items = _check_dense_ids(tables["items"].column("item_id"), f"{where}/items", "item_id")
    n_users = _check_dense_ids(tables["users"].column("user_id"), f"{where}/users", "user_id")
    events = tables["events"]
    if events.num_rows == 0 and "bandit" not in tables:
        raise DataError(f"{where}: the dataset has no events")
    if events.num_rows:
        for col, n in (("item_id", n_items), ("user_id", n_users)):
            lo, hi = pc.min(events[col]).as_py(), pc.max(events[col]).as_py()
            if lo < 0 or hi >= n:
                raise DataError(f"{where}/events: '{col}' out of range [0, {n}) (min {lo}, max {hi})")
        kinds = set(pc.unique(events["event_type"]).to_pylist())
        unknown = kinds - set(EVENT_TYPES)
        if unknown:
            raise DataError(f"{where}/events: unknown event_type {sorted(unknown)}; "
                            f"expected one of {list(EVENT_TYPES)}")
    if "bandit" in tables and tables["bandit"].num_rows:
        bandit = tables["bandit"]
        hi = pc.max(bandit["item_id"]).as_py()
        if hi >= n_items or pc.min(bandit["item_id"]).as_py() < 0:
            raise DataError(f"{where}/bandit: 'item_id' out of range [0, {n_items})")
        p = bandit["propensity"]
        if pc.min(p).as_py() <= 0 or pc.max(p).as_py() > 1:
            raise DataError(f"{where}/bandit: 'propensity' must lie in (0, 1]")
