"""The feedback log's tables: what serving records and what retraining and off-policy evaluation read.

``<root>/impressions/*.parquet``: one row per item shown (request id, user, context hash, the
candidate count, the item, its slot and propensity, model and policy versions, time);
``<root>/events/*.parquet``: one row per feedback event (request id, item, event, time). Files are
written whole (atomic rename locally, single PUT on S3), so a reader never sees half a file.

**Acknowledged rows only.** The app logs a request's records *before* it answers, so a request
that then fails (a 503 after the append, the Guard's 504, a shared-WAL commit that timed out, a
process killed before it answered) would leave rows the client was never acknowledged. Such
records carry an ``ack_id`` and count only once an ``<root>/acks/`` row with that id exists (the
HTTP edge logs it as its 200 goes out; the publisher drops ack and id when both land in the same
part, so most rows are stored with a null ``ack_id``). :func:`read_feedback` -- what off-policy
evaluation and retraining read -- keeps rows whose ``ack_id`` is null or acknowledged.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from training.common import storage
from training.common.errors import DataError

IMPRESSIONS = pa.schema([
    pa.field("request_id", pa.string(), nullable=False),
    pa.field("user_id", pa.string()),  # external user id; null for anonymous requests
    pa.field("context_hash", pa.string(), nullable=False),
    pa.field("num_candidates", pa.int32(), nullable=False),
    pa.field("item_id", pa.string(), nullable=False),  # external item id
    pa.field("position", pa.int32(), nullable=False),
    pa.field("propensity", pa.float64(), nullable=False),
    pa.field("greedy", pa.bool_()),  # the policy's exploit choice (else an exploration draw); null in old logs
    pa.field("score", pa.float64()),
    pa.field("model_version", pa.string(), nullable=False),  # the ranker's
    pa.field("retriever_version", pa.string()),  # the retriever's (equal to model_version); null in old logs
    pa.field("policy_version", pa.string(), nullable=False),
    pa.field("timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
])

FEEDBACK_EVENTS = pa.schema([
    pa.field("request_id", pa.string(), nullable=False),
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("event", pa.string(), nullable=False),
    pa.field("timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
])

TABLES = {"impressions": IMPRESSIONS, "events": FEEDBACK_EVENTS}

ACK_ID = "ack_id"  # stored column: the acknowledgement a row waits for; null: acknowledged when written
ACKS = pa.schema([
    pa.field(ACK_ID, pa.string(), nullable=False),
    pa.field("timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
])
# what the publisher writes: the tables above with the ack column, and the acks themselves
STORED = {**{name: schema.append(pa.field(ACK_ID, pa.string())) for name, schema in TABLES.items()},
          "acks": ACKS}


# what identifies a row: the log is at-least-once (a record can be published twice after a crash,
# an event logged twice when its client retried), so readers keep the first row of each key
ROW_KEYS = {"impressions": ("request_id", "item_id"), "events": ("request_id", "item_id", "event")}


def _files(root: str, table: str):
    """The filesystem and the published Parquet files of ``table`` under the log ``root``."""
    import pyarrow.fs as pafs

    if table not in STORED:
        raise DataError(f"feedback log: unknown table {table!r} (known: {', '.join(TABLES)})")
    fs, path = storage.resolve(storage.join(root, table))
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return fs, []
    return fs, sorted(f.path for f in fs.get_file_info(pafs.FileSelector(path)) if f.path.endswith(".parquet"))


def count_rows(root: str, table: str) -> int:
    """Rows of ``table`` in the published log, from the Parquet footers (no data read; records
    published twice after a crash, and rows never acknowledged, count too)."""
    fs, files = _files(root, table)
    total = 0
    for f in files:
        with fs.open_input_file(f) as src:
            total += pq.ParquetFile(src).metadata.num_rows
    return total


def read_feedback(root: str, table: str, dedupe: bool = True, acknowledged: bool = True) -> pa.Table:
    """All rows of ``table`` (``impressions`` or ``events``) under the log ``root`` (local or S3),
    each record once (``dedupe``: the first row of each :data:`ROW_KEYS` key), and only those the
    client was acknowledged (``acknowledged``: the ``ack_id`` is null or in the acks table)."""
    if table not in TABLES:
        raise DataError(f"feedback log: unknown table {table!r} (known: {', '.join(TABLES)})")
    rows = _read(root, table)
    if acknowledged and rows.num_rows:
        pending = rows[ACK_ID]
        acks = _read(root, "acks")[ACK_ID]
        rows = rows.filter(pc.or_(pc.is_null(pending), pc.is_in(pending, value_set=acks.combine_chunks())))
    rows = rows.select(TABLES[table].names)
    if not dedupe or rows.num_rows == 0:
        return rows
    keys = list(ROW_KEYS[table])
    indexed = rows.select(keys).append_column("__row", pa.array(np.arange(rows.num_rows)))
    first = indexed.group_by(keys, use_threads=False).aggregate([("__row", "min")])["__row_min"]
    return rows.take(np.sort(first.to_numpy()))


def _read(root: str, table: str) -> pa.Table:
    """Every stored row of ``table`` (the ack column included), in file order."""
    fs, files = _files(root, table)
    if not files:
        return STORED[table].empty_table()
    return pa.concat_tables([_conform(pq.read_table(f, filesystem=fs), STORED[table]) for f in files])


def _conform(part: pa.Table, schema: pa.Schema) -> pa.Table:
    """A part in the current schema: columns added since it was written are null."""
    for f in schema:
        if f.name not in part.column_names and f.nullable:
            part = part.append_column(f.name, pa.nulls(part.num_rows, f.type))
    return part.select(schema.names).cast(schema)
