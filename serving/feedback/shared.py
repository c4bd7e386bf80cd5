"""Feedback log whose acknowledgement survives losing the machine (``AppArgs.feedback_ack="shared"``).

:class:`serving.feedback.log.FeedbackLog` acknowledges a record once it is fsynced on the replica's
own disk: a replica that dies is replaced and its successor publishes the segments, but a *node*
that is lost takes that disk with it. Here an append returns only once its record is in **shared
storage** (S3, or a filesystem every node mounts): ``<wal>/<writer>/<time>-<id>.jsonl``, one object
per **group commit** -- a committer thread writes everything appended while the previous write was
in flight as one object, so the cost is one PUT per group, not per request (measured in
``benchmarks/multinode.py``). Committed objects are published as Parquet parts under ``root``
(:func:`serving.feedback.records.write_parts`, same tables) after ``flush_rows`` records or
``flush_seconds``, then deleted.

**Liveness.** A thread of its own (not the publisher, which can be stuck in a long upload)
rewrites ``<wal>/<writer>/_alive`` every ``heartbeat_s`` with a new beat number. Another writer
declares it dead only when it has *seen* that content unchanged for ``dead_after_s`` by its own
monotonic clock -- no remote wall-clock time is compared, so clock skew between nodes cannot make
a live writer look dead, and the default margin (90 s) outlasts a 30 s storage stall plus a
heartbeat and an adoption round twice over. A new writer watches that long before it adopts
anyone. The adopter publishes the dead writer's objects and removes them (an adopter's part name
is deterministic, so two adopters overwrite each other instead of duplicating; a writer wrongly
declared dead can still publish a record twice, and readers de-duplicate on the record id, as
for the local log).

Records appended with an ``ack_id`` count once :meth:`SharedFeedbackLog.ack` logged it: the ack
joins the next group commit without waiting for it (see :mod:`serving.feedback.log`). An append
that timed out (503) but whose group was written later is thus never counted.

Plain Python, no Ray; thread-safe; the same methods as
:class:`~serving.feedback.log.FeedbackLog` (``append_many``, ``ack``, ``tick``, ``flush``,
``health``, ``close``).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow.fs as pafs

from serving.feedback.records import encode, encode_acks, parse_lines, resolve_acks, rows_of, write_parts
from training.common import storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SharedLogConfig:
    root: str  # where the Parquet parts go (local or s3://bucket/prefix)
    wal: str = ""  # shared write-ahead prefix; default <root>/_wal
    flush_rows: int = 500
    flush_seconds: float = 5.0
    commit_timeout_s: float = 10.0  # an append waits this long for its group commit, then fails (503)
    heartbeat_s: float = 5.0
    # a writer whose heartbeat was seen unchanged this long (by the observer's own clock) is adopted:
    # more than a storage stall (30 s) + heartbeat_s + adopt_every_s, with room to spare
    dead_after_s: float = 90.0
    adopt_every_s: float = 10.0
    retry_max_s: float = 30.0

    def __post_init__(self) -> None:
        if not 0 < self.heartbeat_s < self.dead_after_s:
            raise ValueError(f"heartbeat_s ({self.heartbeat_s}) must be > 0 and below dead_after_s "
                             f"({self.dead_after_s}): a live writer must beat within the margin")

    @property
    def wal_root(self) -> str:
        return self.wal or storage.join(self.root, "_wal")


@dataclass
class _Group:
    lines: list[str] = field(default_factory=list)
    rows: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class SharedFeedbackLog:
    def __init__(self, config: SharedLogConfig, writer: str, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time):
        """``clock``: this process's monotonic clock (liveness of others is judged by it);
        ``wall``: its wall clock, only written into the heartbeat for operators to read."""
        self.config, self.writer = config, writer
        self.clock, self.wall = clock, wall
        self.fs, self.wal = storage.resolve(config.wal_root)
        self.dir = f"{self.wal}/{writer}"
        self.fs.create_dir(self.dir, recursive=True)
        self.cond = threading.Condition()
        self.group = _Group()  # open: collecting appends while the previous group is written
        self.acks: list[str] = []  # ack lines for the next group commit (nobody waits for them)
        self.committed: list[tuple[str, str, int]] = []  # (object name, text, rows): not yet published
        self.publishing = threading.Lock()
        self.opened = clock()
        self.corrupt_lines = 0
        self.failures, self.retry_at = 0, 0.0
        self.last_error: str | None = None
        self.commits = self.committed_rows = 0  # group commits and rows they carried (batching factor)
        self.adopted_writers = 0
        self.adopted_at = clock()
        self.watched: dict[str, tuple[str, float]] = {}  # other writer -> (heartbeat seen, since when)
        self.incarnation, self.beats = uuid.uuid4().hex[:12], 0
        self.closed = False
        self.stop_beating = threading.Event()
        self._heartbeat()
        self.heart = threading.Thread(target=self._beat_loop, name="feedback-heartbeat", daemon=True)
        self.heart.start()
        self.recovered = self._adopt(include_self=True)  # what an earlier life of this writer left
        self.committer = threading.Thread(target=self._commit_loop, name="feedback-commit", daemon=True)
        self.committer.start()

    # -- appends: acknowledged once in shared storage ------------------------------------------
    def append(self, table: str, record: dict) -> None:
        self.append_many(table, [record])

    def append_many(self, table: str, records: list[dict], ack_id: str | None = None) -> None:
        """Returns once ``records`` are in shared storage; raises ``OSError`` (nothing
        acknowledged) when the group they joined could not be written in time. With ``ack_id``
        they count once :meth:`ack` logs it."""
        lines = encode(table, records, ack_id)
        with self.cond:
            if self.closed:
                raise OSError("the feedback log is closed")
            group = self.group
            group.lines.append(lines)
            group.rows += len(records)
            self.cond.notify()
        if not group.done.wait(self.config.commit_timeout_s):
            raise OSError(f"shared WAL: no commit within {self.config.commit_timeout_s:.0f} s")
        if group.error is not None:
            raise OSError(f"shared WAL write failed: {type(group.error).__name__}: {str(group.error)[:200]}")

    def ack(self, ack_ids: list[str]) -> None:
        """Log that the appends of ``ack_ids`` were acknowledged: they join the next group commit
        (written at once when the committer is idle); returns without waiting for it."""
        if not ack_ids:
            return
        with self.cond:
            self.acks.append(encode_acks(ack_ids))
            self.cond.notify()

    def _commit_loop(self) -> None:
        while True:
            with self.cond:
                while not self.group.lines and not self.acks and not self.closed:
                    self.cond.wait()
                if not self.group.lines and not self.acks:
                    return  # closed and drained
                group, self.group = self.group, _Group()
                acks, self.acks = self.acks, []
            name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.jsonl"
            text = "".join(acks + group.lines)
            try:
                _put(self.fs, f"{self.dir}/{name}", text.encode())
            except Exception as exc:  # noqa: BLE001 -- reported to every append of the group
                group.error = exc
                group.done.set()
                if acks:  # nobody waits for them: kept for the next commit
                    with self.cond:
                        if self.closed:
                            log.warning("feedback log: %d ack(s) could not be written while closing (%s); their "
                                        "records will not count", sum(a.count("\n") for a in acks), exc)
                        else:
                            log.warning("feedback log: writing acks failed (%s); retried", exc)
                            self.acks[:0] = acks
                            self.cond.wait(1.0)
                continue
            else:
                with self.publishing:
                    self.committed.append((name, text, group.rows))
                self.commits += 1
                self.committed_rows += group.rows
            group.done.set()

    # -- publishing --------------------------------------------------------------------------------
    def tick(self) -> int:
        """Periodic work of the publisher: adopt stopped writers, publish when due (the
        heartbeat has a thread of its own)."""
        now = self.clock()
        rows = 0
        if now - self.adopted_at >= self.config.adopt_every_s:
            rows += self._adopt()
        with self.publishing:
            objects, pending = len(self.committed), sum(r for _, _, r in self.committed)
        due = objects and (pending >= self.config.flush_rows or now - self.opened >= self.config.flush_seconds)
        if due and now >= self.retry_at:
            rows += self.publish()
        return rows

    def flush(self) -> int:
        return self.publish(raise_errors=True)

    def publish(self, raise_errors: bool = False) -> int:
        """Every committed group as one Parquet part per table, then the objects deleted."""
        with self.publishing:
            batch = list(self.committed)
            if not batch:
                return 0
            try:
                rows = self._publish(self.writer, [(n, t) for n, t, _ in batch])
            except Exception as exc:
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {str(exc)[:300]}"
                self.retry_at = self.clock() + min(self.config.retry_max_s, 0.5 * 2 ** min(self.failures, 16))
                log.warning("feedback log: publishing %d group(s) failed (%s); kept in the shared WAL",
                            len(batch), self.last_error)
                if raise_errors:
                    raise
                return 0
            del self.committed[:len(batch)]
            self.failures, self.last_error = 0, None
            self.opened = self.clock()
            return rows

    def _publish(self, writer: str, objects: list[tuple[str, str]]) -> int:
        by_table: dict[str, list[dict]] = {}
        for name, text in objects:
            parsed, corrupt = parse_lines(text.splitlines(keepends=True), f"{writer}/{name}")
            self.corrupt_lines += corrupt
            for table, recs in parsed.items():
                by_table.setdefault(table, []).extend(recs)
        by_table = resolve_acks(by_table)
        self.corrupt_lines += write_parts(self.config.root, by_table, f"{writer}-{objects[0][0][:-6]}")
        for name, _ in objects:
            try:
                self.fs.delete_file(f"{self.wal}/{writer}/{name}")
            except FileNotFoundError:
                pass  # an adopter got there first (it published the same records)
        return rows_of(by_table)

    # -- liveness and adoption ---------------------------------------------------------------------
    def _beat_loop(self) -> None:
        while not self.stop_beating.wait(self.config.heartbeat_s):
            self._heartbeat()

    def _heartbeat(self) -> None:
        """A new beat number (with this life's id, and the wall time for operators to read)."""
        self.beats += 1
        try:
            _put(self.fs, f"{self.dir}/_alive", f"{self.incarnation} {self.beats} {self.wall():.3f}".encode())
        except Exception as exc:  # noqa: BLE001 -- a missed beat; the next one tries again
            log.warning("feedback log: heartbeat failed: %s", exc)

    def _adopt(self, include_self: bool = False) -> int:
        """Publish the objects of writers seen dead (:meth:`_dead`) (and, at start, this writer's
        own earlier objects); returns the rows published."""
        self.adopted_at = self.clock()
        rows = 0
        try:
            folders = [i.path.rsplit("/", 1)[-1] for i in self.fs.get_file_info(
                pafs.FileSelector(self.wal, allow_not_found=True)) if i.type == pafs.FileType.Directory]
        except Exception as exc:  # noqa: BLE001 -- storage down: retried at the next round
            log.warning("feedback log: cannot list the shared WAL: %s", exc)
            return 0
        for gone in set(self.watched) - set(folders):
            del self.watched[gone]
        for writer in folders:
            if writer == self.writer and not include_self:
                continue
            try:
                if writer != self.writer and not self._dead(writer):
                    continue
                names = sorted(i.path.rsplit("/", 1)[-1] for i in self.fs.get_file_info(
                    pafs.FileSelector(f"{self.wal}/{writer}")) if i.path.endswith(".jsonl"))
                if names:
                    texts = [(n, self._read(f"{self.wal}/{writer}/{n}")) for n in names]
                    rows += self._publish(writer, texts)
                if writer != self.writer:
                    self.fs.delete_dir(f"{self.wal}/{writer}")
                    self.watched.pop(writer, None)
                    self.adopted_writers += 1
                    log.warning("feedback log: adopted %d group(s) of stopped writer %s", len(names), writer)
            except Exception as exc:  # noqa: BLE001 -- retried at the next round
                log.warning("feedback log: adopting %s failed: %s", writer, exc)
        return rows

    def _dead(self, writer: str) -> bool:
        """Whether ``writer``'s heartbeat (or, without one, its list of objects) has been seen
        unchanged for ``dead_after_s`` by this writer's own clock. A read that fails raises:
        nothing is concluded from storage that does not answer."""
        try:
            seen = "beat " + self._read(f"{self.wal}/{writer}/_alive")
        except FileNotFoundError:  # killed between its folder and first beat, or a torn close
            seen = "objects " + " ".join(sorted(i.path.rsplit("/", 1)[-1] for i in self.fs.get_file_info(
                pafs.FileSelector(f"{self.wal}/{writer}", allow_not_found=True))))
        now = self.clock()
        last = self.watched.get(writer)
        if last is None or last[0] != seen:
            self.watched[writer] = (seen, now)  # alive (or first seen): watched from now on
            return False
        return now - last[1] >= self.config.dead_after_s

    def _read(self, path: str) -> str:
        with self.fs.open_input_stream(path) as fh:
            return fh.read().decode("utf-8", errors="replace")

    def health(self) -> dict:
        return {"ok": self.failures == 0, "unpublished_segments": len(self.committed), "failures": self.failures,
                "last_error": self.last_error, "corrupt_lines": self.corrupt_lines, "commits": self.commits,
                "committed_rows": self.committed_rows, "adopted_writers": self.adopted_writers,
                "quarantined_segments": 0}  # nothing is set aside here: a batch publishes whole or not

    def close(self) -> None:
        with self.cond:
            if self.closed:
                return
            self.closed = True
            self.cond.notify()
        self.committer.join(timeout=self.config.commit_timeout_s)
        self.stop_beating.set()
        self.heart.join(timeout=self.config.commit_timeout_s)  # no beat lands after the folder is gone
        try:
            self.flush()
            self.fs.delete_dir(self.dir)  # nothing left: no heartbeat, no objects
        except Exception:  # noqa: BLE001 -- left in the shared WAL: whoever finds it stale publishes it
            log.warning("feedback log: %d group(s) left in %s for another writer", len(self.committed), self.dir)


def _put(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Whole or not at all: one S3 PUT, or a fsynced temp file renamed into place."""
    storage.write_durably(fs, f"{path}.tmp-{uuid.uuid4().hex[:8]}", path, data)
