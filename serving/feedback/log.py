"""Durable, batched feedback log: no acknowledged impression or event is lost when a replica dies.

Every ``append`` writes JSON lines to a **write-ahead log** segment on the replica's disk
(``wal_dir``: a persistent volume on a cluster) and ``fsync``s it before returning, so once the
HTTP response acknowledges a request its record is on disk. A segment is **sealed** after
``flush_rows`` records or ``flush_seconds`` and **published**: its lines become Parquet part
files under ``root`` (local or S3; see :mod:`training.data.feedback` for the tables, and
:mod:`serving.feedback.records` for the lines and parts), each written whole (local parts fsynced
with their directory), and only then is the segment deleted.
A failed publish (S3 down, disk full) keeps the sealed segment and is retried with exponential
backoff (``retry_max_s``); meanwhile appends go on into a fresh segment and :meth:`health`
reports the backlog, so the app can say it is not ready. A corrupt line inside a segment is
skipped and counted (``corrupt_lines``), never fatal; a torn last line was never acknowledged.

A writer that starts finds the segments a crashed predecessor left in its WAL folder and
publishes them, so a kill at any point loses nothing that was acknowledged -- also when the
replacement replica has another name: folders whose writer is dead (its lock is free) are
recovered too, on start and every 30 s while it runs; a crash between a part's upload and the segment's removal can publish a record
twice, so readers de-duplicate on the record id (at-least-once).

**Not acknowledged, not counted.** ``append_many(..., ack_id=...)`` logs records that count
only once :meth:`FeedbackLog.ack` logs their id too (the HTTP edge does so as its 200 goes out):
a request that failed after its append (503, the Guard's 504) or a process that died before
answering leaves records that readers skip (:func:`training.data.feedback.read_feedback`). An
ack is one short line, written (and fsynced) with the next append or by the caller's thread.

A segment that keeps failing while others publish is **quarantined**: moved to
``<wal_dir>/.quarantine/`` with a logged error naming it, counted in :meth:`FeedbackLog.health`
(``/readyz``, the ``raycart_feedback_quarantined_segments`` gauge); once fixed,
:func:`republish_quarantined` (``raycart republish``) publishes it.

Thread-safe. With ``background=True`` appends only seal; the owner calls :meth:`tick`
periodically (off its event loop) to publish. Plain Python (no Ray): the Serve deployment owns
one per replica.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from serving.feedback.records import encode, encode_acks, parse_lines, resolve_acks, rows_of, write_parts
from training.common import storage

log = logging.getLogger(__name__)
QUARANTINE_AFTER = 20  # failed publishes of one segment, while others publish, before it is moved aside
QUARANTINE = ".quarantine"  # the folder under wal_dir where such segments wait for an operator
ADOPT_EVERY_S = 30.0  # how often a running writer looks for segments that stopped writers left


@dataclass(frozen=True)
class FeedbackLogConfig:
    root: str  # where the Parquet parts go (local or s3://bucket/prefix)
    wal_dir: str  # local folder for the write-ahead segments (one subfolder per writer)
    flush_rows: int = 500
    flush_seconds: float = 5.0
    retry_max_s: float = 30.0  # longest wait between retries of a failed publish
    background: bool = False  # True: appends only seal, tick() publishes

    @classmethod
    def tiny(cls, root: str, wal_dir: str) -> FeedbackLogConfig:
        return cls(root=root, wal_dir=wal_dir, flush_rows=10, flush_seconds=1.0)


class FeedbackLog:
    def __init__(self, config: FeedbackLogConfig, writer: str):
        self.config, self.writer = config, writer
        self.dir = Path(config.wal_dir) / writer
        # a live writer holds an exclusive lock on its folder; a folder whose lock can be taken
        # belongs to a dead writer (e.g. a killed replica, replaced under a new name). A new folder
        # is made under a hidden name, locked, then renamed: no one can adopt it in between.
        if not self.dir.exists():
            self.dir.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.dir.parent / f".new-{writer}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir()
            self._lock = open(tmp / ".lock", "w")  # noqa: SIM115 -- held for the writer's lifetime
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(tmp, self.dir)
        else:  # this writer's earlier life
            self._lock = open(self.dir / ".lock", "w")  # noqa: SIM115
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _fsync_dir(self.dir.parent)
        self.failed: dict[Path, int] = {}  # failed publishes per segment
        self.adopted_at = time.monotonic()
        self.mutex = threading.Lock()  # the open segment
        self.publishing = threading.Lock()  # the sealed ones
        self.sealed: list[tuple[Path, str]] = []  # (segment, writer) waiting to be published
        self.corrupt_lines = 0
        self.failures = 0  # consecutive failed publishes
        self.last_error: str | None = None
        self.retry_at = 0.0
        self._adopted: list[tuple[Path, IO[str]]] = []  # dead writers' folders (locked) whose segments are queued
        self.acks: list[str] = []  # acknowledgements not yet written (the next write carries them)
        self.ack_lock = threading.Lock()  # self.acks only: never held across I/O
        self.sealed.extend((seg, writer) for seg in sorted(self.dir.glob("*.jsonl")))
        for stuck in quarantined(config.wal_dir):
            log.warning("feedback log: quarantined segment %s is not published; fix it and run `raycart "
                        "republish --feedback %s --wal-dir %s`", stuck, config.root, config.wal_dir)
        self._adopt_dead_writers()
        self._open_segment()
        self.recovered = self.publish()

    def _open_segment(self) -> None:
        segment = self.dir / f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.jsonl"
        fh = open(segment, "a", encoding="utf-8")  # noqa: SIM115 -- lives as long as the log
        _fsync_dir(self.dir)  # the segment's name survives a crash with its first fsynced line
        self.segment, self._fh = segment, fh
        self.pending, self.lines, self.opened = 0, 0, time.monotonic()  # records; records and acks
        self.broken_tail = False  # the last write failed part-way (see _write)

    def append(self, table: str, record: dict) -> None:
        """Durably record one row of ``table`` (``impressions`` / ``events``); returns once on disk."""
        self.append_many(table, [record])

    def append_many(self, table: str, records: list[dict], ack_id: str | None = None) -> None:
        """Durably record rows of ``table``; with ``ack_id`` they count once :meth:`ack` logs it."""
        lines = encode(table, records, ack_id)
        with self.mutex:
            self._write(lines, len(records))
            due = self._due()
        if due and not self.config.background:
            self.flush()

    def ack(self, ack_ids: list[str]) -> None:
        """Log that the appends of ``ack_ids`` were acknowledged; on disk when it returns."""
        with self.ack_lock:
            self.acks.extend(ack_ids)
        with self.mutex:
            self._write("", 0)  # nothing when an append carried them meanwhile

    def _write(self, lines: str, records: int) -> None:
        """Under ``mutex``: ``lines`` and the waiting acks, fsynced; a failure keeps the acks."""
        with self.ack_lock:
            acks, self.acks = self.acks, []
        text = encode_acks(acks) + lines
        if not text:
            return
        try:
            # after a failed write (disk full) the segment may end in part of a line: a newline
            # first, so these lines are not glued onto the fragment and skipped with it
            self._fh.write(("\n" if self.broken_tail else "") + text)
            self.broken_tail = True
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self.broken_tail = False
        except BaseException:
            with self.ack_lock:
                self.acks[:0] = acks
            raise
        self.pending += records
        self.lines += len(acks) + records

    def _due(self) -> bool:
        return self.lines > 0 and (self.pending >= self.config.flush_rows
                                   or time.monotonic() - self.opened >= self.config.flush_seconds)

    def seal(self) -> bool:
        """Close the open segment (when it holds records or acks) and queue it for publishing."""
        with self.mutex:
            if self.lines == 0:
                return False
            old, fh = self.segment, self._fh
            self._open_segment()  # first: if it fails (disk full), the old segment stays open and in use
            fh.close()
            self.sealed.append((old, self.writer))
            return True

    def flush(self) -> int:
        """Seal the open segment and publish every sealed one now; returns the rows written.
        Raises when a publish fails (the segment stays queued and is retried later)."""
        self.seal()
        return self.publish(raise_errors=True)

    def tick(self) -> int:
        """Periodic work (background mode): seal a due segment, publish when no backoff is pending."""
        with self.mutex:
            due = self._due()
        if due:
            self.seal()
        if time.monotonic() - self.adopted_at >= ADOPT_EVERY_S:
            self._adopt_dead_writers()
        if self.sealed and time.monotonic() >= self.retry_at:
            return self.publish()
        return 0

    def publish(self, raise_errors: bool = False) -> int:
        """Publish every sealed segment. A failure keeps the segment (retried with backoff) and the
        others are still tried; a segment that has failed ``QUARANTINE_AFTER`` times while others
        published (so the store works: the segment itself is bad) is moved to ``.quarantine/``
        in the WAL folder, logged -- kept on disk for an operator, no longer blocking."""
        rows, error, published = 0, None, False
        with self.publishing:
            for segment, writer in list(self.sealed):
                try:
                    rows += self._publish(segment, writer)
                except Exception as exc:  # noqa: BLE001 -- kept and retried
                    error = error or exc
                    self.failed[segment] = self.failed.get(segment, 0) + 1
                    log.warning("feedback log: publishing %s failed (%s: %s); kept in the WAL", segment.name,
                                type(exc).__name__, str(exc)[:200])
                    continue
                published = True
                self.sealed.remove((segment, writer))
                self.failed.pop(segment, None)
            if published:
                for segment, writer in list(self.sealed):
                    if self.failed.get(segment, 0) >= QUARANTINE_AFTER:
                        self._quarantine(segment, writer)
            if error is None:
                self.failures, self.last_error = 0, None
            else:
                self.failures += 1
                self.last_error = f"{type(error).__name__}: {str(error)[:300]}"
                wait = min(self.config.retry_max_s, 0.5 * 2 ** min(self.failures, 16))
                self.retry_at = time.monotonic() + wait
                log.warning("feedback log: %d segment(s) kept in the WAL, retry in %.1f s", len(self.sealed), wait)
        if error is not None and raise_errors:
            raise error
        return rows

    def _quarantine(self, segment: Path, writer: str) -> None:
        aside = Path(self.config.wal_dir) / QUARANTINE
        aside.mkdir(exist_ok=True)
        target = aside / f"{writer}-{segment.name}"
        os.replace(segment, target)
        _fsync_dir(aside)
        self.sealed.remove((segment, writer))
        self.failed.pop(segment, None)
        log.error("feedback log: %s failed %d times while other segments published; moved to %s -- its "
                  "records are NOT published: fix it and run `raycart republish --feedback %s --wal-dir %s`",
                  segment.name, QUARANTINE_AFTER, target, self.config.root, self.config.wal_dir)

    @property
    def quarantined_segments(self) -> int:
        return len(quarantined(self.config.wal_dir))

    def health(self) -> dict:
        """``ok`` False while sealed segments cannot be published (they stay in the WAL);
        ``quarantined_segments``: segments set aside under ``wal_dir`` (any writer's), not published."""
        return {"ok": self.failures == 0, "unpublished_segments": len(self.sealed),
                "failures": self.failures, "last_error": self.last_error, "corrupt_lines": self.corrupt_lines,
                "quarantined_segments": self.quarantined_segments}

    def _adopt_dead_writers(self) -> None:
        """Queue the segments dead writers left: any writer folder under ``wal_dir`` whose lock is
        free (its process is gone). The folder is removed once its segments are published."""
        self.adopted_at = time.monotonic()
        held = {folder for folder, _ in self._adopted}
        for other in sorted(p for p in Path(self.config.wal_dir).iterdir()
                            if p.is_dir() and p != self.dir and not p.name.startswith(".") and p not in held):
            try:  # only writer folders (they hold a lock file); not e.g. a volume's lost+found
                fd = os.open(other / ".lock", os.O_RDWR)
            except OSError:
                continue
            lock = os.fdopen(fd, "r+")
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                lock.close()
                continue  # alive
            segments = sorted(other.glob("*.jsonl"))
            if not segments:
                shutil.rmtree(other, ignore_errors=True)
                lock.close()
                continue
            self.sealed.extend((seg, other.name) for seg in segments)
            self._adopted.append((other, lock))

    def _read(self, segment: Path) -> dict[str, list[dict]]:
        with open(segment, encoding="utf-8", errors="replace") as fh:
            by_table, corrupt = parse_lines(fh, str(segment))
        self.corrupt_lines += corrupt
        return by_table

    def _publish(self, segment: Path, writer: str | None = None) -> int:
        by_table = resolve_acks(self._read(segment)) if segment.exists() else {}
        self.corrupt_lines += write_parts(self.config.root, by_table, f"{writer or self.writer}-{segment.stem}")
        if segment.exists():
            segment.unlink()
        for other, lock in list(self._adopted):
            if other.name == writer and not any(w == writer for s, w in self.sealed if s != segment):
                shutil.rmtree(other, ignore_errors=True)
                lock.close()
                self._adopted.remove((other, lock))
        return rows_of(by_table)

    def close(self) -> None:
        if self._fh.closed:
            return
        try:
            self.ack([])  # acks still queued
            self.flush()
        except Exception:  # noqa: BLE001 -- the segments stay in the WAL: the next writer publishes them
            log.warning("feedback log: %d segment(s) left in %s for the next writer", len(self.sealed), self.dir)
        with self.mutex:
            self._fh.close()
        if self.segment.exists() and self.segment.stat().st_size == 0:
            self.segment.unlink()
        self._lock.close()


def _fsync_dir(path: Path) -> None:
    try:
        storage.fsync_path(path)
    except OSError:  # some filesystems do not allow fsync on a directory
        pass


def quarantined(wal_dir: str) -> list[Path]:
    """The segments set aside under ``<wal_dir>/.quarantine/``, oldest name first."""
    return sorted((Path(wal_dir) / QUARANTINE).glob("*.jsonl"))


@dataclass(frozen=True)
class Republished:
    segments: int  # published and removed from the quarantine
    rows: int  # records they held
    failed: list[tuple[Path, str]]  # (segment, error): still quarantined


def republish_quarantined(root: str, wal_dir: str) -> Republished:
    """Publish each quarantined segment under ``wal_dir`` to ``root`` (the part name its writer
    would have used: publishing twice overwrites), then remove it. One that still fails stays."""
    segments, rows, failed = 0, 0, []
    for segment in quarantined(wal_dir):
        try:
            with open(segment, encoding="utf-8", errors="replace") as fh:
                by_table, _ = parse_lines(fh, str(segment))
            by_table = resolve_acks(by_table)
            skipped = write_parts(root, by_table, segment.stem)
            segment.unlink()
        except Exception as exc:  # noqa: BLE001 -- reported; the segment stays for the next try
            failed.append((segment, f"{type(exc).__name__}: {str(exc)[:200]}"))
            log.warning("feedback log: republishing %s failed (%s); left in the quarantine", segment, failed[-1][1])
            continue
        segments += 1
        rows += rows_of(by_table) - skipped
    return Republished(segments, rows, failed)
