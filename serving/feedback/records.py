"""The feedback log's records, as both writers store them: :class:`~serving.feedback.log.FeedbackLog`
(a WAL per replica) and :class:`~serving.feedback.shared.SharedFeedbackLog` (one shared WAL).

* WAL lines: :func:`encode` (records of a table, waiting for an ack id or not), :func:`encode_acks`,
  and back, :func:`parse_lines` (corrupt lines skipped and counted, a torn last line dropped);
* :func:`resolve_acks`: the acks inside one batch settled against its records;
* :func:`write_parts`: one Parquet part per table (:mod:`training.data.feedback` has the tables),
  written whole, so publishing a batch twice overwrites instead of duplicating.

Plain Python, no Ray.
"""

from __future__ import annotations

import json
import logging
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq

from training.common import storage
from training.data.feedback import ACK_ID, STORED, TABLES

log = logging.getLogger(__name__)


def _timestamp(value) -> int:
    """Microseconds since the epoch from a float of seconds, an int of microseconds or None (now)."""
    if value is None:
        return int(time.time() * 1_000_000)
    if isinstance(value, float):
        return int(value * 1_000_000)
    return int(value)


def encode(table: str, records: list[dict], ack_id: str | None = None) -> str:
    """JSON lines of ``records`` for ``table`` (the WAL format); with ``ack_id`` they wait for its ack."""
    if table not in TABLES:
        raise ValueError(f"unknown feedback table {table!r}")
    extra = {ACK_ID: ack_id} if ack_id is not None else {}
    return "".join(json.dumps({"table": table, **r, **extra}, default=str) + "\n" for r in records)


def encode_acks(ack_ids: list[str]) -> str:
    """JSON lines acknowledging the appends of ``ack_ids``."""
    now = time.time()
    return "".join(json.dumps({"table": "acks", ACK_ID: a, "timestamp": now}) + "\n" for a in ack_ids)


def resolve_acks(by_table: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Settle the acks inside one batch of WAL records: a record whose ack is in the batch is
    stored acknowledged (null ``ack_id``) and that ack dropped -- an ack id belongs to one append,
    whose records went into one write. Left: records still waiting, acks of other batches' records."""
    acks = by_table.get("acks", [])
    acked = {a.get(ACK_ID) for a in acks if isinstance(a.get(ACK_ID), str)}
    used = set()
    out: dict[str, list[dict]] = {}
    for table, recs in by_table.items():
        if table == "acks":
            continue
        for r in recs:
            a = r.get(ACK_ID)
            if isinstance(a, str) and a in acked:
                r[ACK_ID] = None
                used.add(a)
        out[table] = recs
    left = [a for a in acks if a.get(ACK_ID) not in used]
    if left:
        out["acks"] = left
    return out


def rows_of(by_table: dict[str, list[dict]]) -> int:
    """Records (impressions and events) in a batch, acks not counted."""
    return sum(len(v) for t, v in by_table.items() if t in TABLES)


def parse_lines(lines, source: str) -> tuple[dict[str, list[dict]], int]:
    """WAL lines -> (records by table, acks under ``acks``; corrupt lines skipped). A torn last
    line (no newline) was never acknowledged and is dropped silently."""
    by_table: dict[str, list[dict]] = {}
    corrupt = 0
    for n, line in enumerate(lines, 1):
        if not line.endswith("\n"):
            break  # a torn last line was never acknowledged (fsync returns after the newline)
        try:
            rec = json.loads(line)
            table = rec.pop("table")
            if table not in STORED:
                raise ValueError(f"unknown table {table!r}")
            rec["timestamp"] = _timestamp(rec.get("timestamp"))
        except (ValueError, KeyError, AttributeError, TypeError) as exc:
            corrupt += 1
            log.warning("feedback log: %s line %d is corrupt (%s); skipped", source, n, str(exc)[:100])
            continue
        by_table.setdefault(table, []).append(rec)
    return by_table, corrupt


def write_parts(root: str, by_table: dict[str, list[dict]], name: str) -> int:
    """One Parquet part ``part-<name>.parquet`` per table under ``root``, each written whole (local:
    fsynced with its directory; S3: one PUT). Same ``name`` and records -> the same file, so
    publishing twice overwrites instead of duplicating. Returns the rows that did not fit the table."""
    skipped = 0
    for table, recs in by_table.items():
        schema = STORED[table]
        try:
            data = pa.Table.from_pylist(recs, schema=schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            good = [r for r in recs if _fits(r, schema)]
            skipped += len(recs) - len(good)
            log.warning("feedback log: %s had %d row(s) that do not fit the table; skipped", name,
                        len(recs) - len(good))
            data = pa.Table.from_pylist(good, schema=schema)
        fs, path = storage.resolve(storage.join(root, table, f"part-{name}.parquet"))
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        buf = pa.BufferOutputStream()
        pq.write_table(data, buf)
        storage.write_durably(fs, f"{path}.tmp-{uuid.uuid4().hex[:8]}", path, buf.getvalue().to_pybytes())
    return skipped


def _fits(record: dict, schema: pa.Schema) -> bool:
    try:
        pa.Table.from_pylist([record], schema=schema)
        return True
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
        return False
