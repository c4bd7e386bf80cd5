"""Durable, batched feedback log: no acknowledged impression or event is lost when a replica dies.

Every ``append`` writes one JSON line to a **write-ahead log** on the replica's local disk and
``fsync``s it before returning, so once the HTTP response acknowledges a request its record is on
disk. ``flush`` (every ``flush_rows`` records or ``flush_seconds``, and on shutdown) turns the
pending lines into Parquet part files under ``root`` (local or S3; see
:mod:`training.data.feedback` for the tables), each written whole, then starts a fresh WAL
segment. A writer that starts finds the segments a crashed predecessor left in its WAL folder
and publishes them first (``recover``), so a kill at any point loses nothing that was
acknowledged -- also when the replacement replica has another name: folders whose writer is
dead (its lock is free) are recovered too; a crash between a part's upload and the segment's
removal can publish a record twice, so readers de-duplicate on the record id (at-least-once).

Plain Python (no Ray): the Serve deployment owns one per replica.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from training import storage
from training.data.feedback import TABLES


@dataclass(frozen=True)
class FeedbackLogConfig:
    root: str  # where the Parquet parts go (local or s3://bucket/prefix)
    wal_dir: str  # local folder for the write-ahead segments (one subfolder per writer)
    flush_rows: int = 500
    flush_seconds: float = 5.0

    @classmethod
    def tiny(cls, root: str, wal_dir: str) -> FeedbackLogConfig:
        return cls(root=root, wal_dir=wal_dir, flush_rows=10, flush_seconds=1.0)


class FeedbackLog:
    def __init__(self, config: FeedbackLogConfig, writer: str):
        self.config, self.writer = config, writer
        self.dir = Path(config.wal_dir) / writer
        self.dir.mkdir(parents=True, exist_ok=True)
        # a live writer holds an exclusive lock on its folder; a folder whose lock can be taken
        # belongs to a dead writer (e.g. a killed replica, replaced under a new name)
        self._lock = open(self.dir / ".lock", "w")  # noqa: SIM115 -- held for the writer's lifetime
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.recovered = self.recover()
        self._open_segment()

    def _open_segment(self) -> None:
        self.segment = self.dir / f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.jsonl"
        self._fh = open(self.segment, "a", encoding="utf-8")  # noqa: SIM115 -- lives as long as the log
        self.pending, self.opened = 0, time.monotonic()

    def append(self, table: str, record: dict) -> None:
        """Durably record one row of ``table`` (``impressions`` / ``events``); returns once on disk."""
        self.append_many(table, [record])

    def append_many(self, table: str, records: list[dict]) -> None:
        if table not in TABLES:
            raise ValueError(f"unknown feedback table {table!r}")
        lines = "".join(json.dumps({"table": table, **r}, default=str) + "\n" for r in records)
        self._fh.write(lines)
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.pending += len(records)
        if self.pending >= self.config.flush_rows or time.monotonic() - self.opened >= self.config.flush_seconds:
            self.flush()

    def flush(self) -> int:
        """Publish the current segment as Parquet parts; returns the rows written."""
        if self.pending == 0:
            return 0
        self._fh.close()
        rows = self._publish(self.segment, self.writer)
        self._open_segment()
        return rows

    def recover(self) -> int:
        """Publish the segments dead writers left behind: this writer's earlier life, and any other
        writer folder under ``wal_dir`` whose lock is free (its process is gone)."""
        rows = sum(self._publish(seg, self.writer) for seg in sorted(self.dir.glob("*.jsonl")))
        for other in sorted(p for p in Path(self.config.wal_dir).iterdir() if p.is_dir() and p != self.dir):
            with open(other / ".lock", "a") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # alive
                rows += sum(self._publish(seg, other.name) for seg in sorted(other.glob("*.jsonl")))
                shutil.rmtree(other, ignore_errors=True)
        return rows

    def _publish(self, segment: Path, writer: str | None = None) -> int:
        by_table: dict[str, list[dict]] = {}
        with open(segment, encoding="utf-8") as fh:
            for line in fh:
                if not line.endswith("\n"):
                    break  # a torn last line was never acknowledged (fsync returns after the newline)
                rec = json.loads(line)
                by_table.setdefault(rec.pop("table"), []).append(rec)
        for table, recs in by_table.items():
            schema = TABLES[table]
            for r in recs:
                r["timestamp"] = _timestamp(r.get("timestamp"))
            data = pa.Table.from_pylist(recs, schema=schema)
            name = f"part-{writer or self.writer}-{segment.stem}.parquet"
            fs, path = storage.resolve(storage.join(self.config.root, table, name))
            fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
            tmp = path + ".tmp" if not storage.is_s3(self.config.root) else path  # S3 PUT is atomic
            pq.write_table(data, tmp, filesystem=fs)
            if tmp != path:
                fs.move(tmp, path)
        segment.unlink()
        return sum(len(v) for v in by_table.values())

    def close(self) -> None:
        if self._fh.closed:
            return
        self.flush()
        self._fh.close()
        if self.segment.exists() and self.segment.stat().st_size == 0:
            self.segment.unlink()
        self._lock.close()


def _timestamp(value) -> int:
    """Microseconds since the epoch from a float of seconds, an int of microseconds or None (now)."""
    if value is None:
        return int(time.time() * 1_000_000)
    if isinstance(value, float):
        return int(value * 1_000_000)
    return int(value)
