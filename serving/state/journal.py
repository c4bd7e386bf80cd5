"""The files of the embedded user state (:class:`serving.state.memory.MemoryUserState`): a snapshot
and the journal segments written since.

* ``journal.<seq>.jsonl``: one JSON list per change, written with ``O_DSYNC`` (on disk when the
  write returns) before the change is acknowledged. Each start opens a new segment, so a line torn by a crash (the last
  line of a segment, with no newline: never acknowledged) is never glued to the next write.
* ``snapshot.jsonl``: a header ``{"next_seq": n, ...}`` and one line per key or request: the
  whole state up to (not including) segment ``n``. Written beside, fsynced and renamed, so a
  crash leaves the old one or the new one; segments below ``n`` are then deleted.

Files of the earlier layout (``snapshot.json``, one document, and ``journal.jsonl``) are read as
the snapshot and the segment before every other, and removed by the next snapshot.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

SNAPSHOT = "snapshot.jsonl"
LEGACY_SNAPSHOT, LEGACY_JOURNAL = "snapshot.json", "journal.jsonl"
_SEGMENT = re.compile(r"journal\.(\d+)\.jsonl")


class Journal:
    """Segments and snapshot in ``directory`` (local disk). Not thread-safe: the owner appends
    and seals under its lock; reading sealed segments and writing a snapshot need no lock."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.skipped = 0  # complete lines that could not be read (corruption: reported)
        self.torn = 0  # unterminated last lines of a segment (a write cut by a crash: never acknowledged)
        self.lines = 0  # lines in the open segment
        self.seq = -1
        self._fd: int | None = None

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    # -- reading --------------------------------------------------------------------------------

    def segments(self) -> list[tuple[int, Path]]:
        found = [(int(m.group(1)), p) for p in self.dir.iterdir() if (m := _SEGMENT.fullmatch(p.name))]
        if (self.dir / LEGACY_JOURNAL).exists():
            found.append((-1, self.dir / LEGACY_JOURNAL))
        return sorted(found)

    def snapshot(self) -> tuple[int, Iterator[list]]:
        """``(next_seq, records)``: segments from ``next_seq`` on come after the snapshot;
        records are ``["k", key, events, shown, touched]`` and ``["q", request, key, items, at, done]``
        (events, answers and items as JSON texts; as lists in the earlier layout)."""
        path = self.dir / SNAPSHOT
        if path.exists():
            fh = open(path, encoding="utf-8")  # noqa: SIM115 -- closed by the generator
            header = json.loads(fh.readline())
            return int(header["next_seq"]), _records(fh)
        legacy = self.dir / LEGACY_SNAPSHOT
        if legacy.exists():
            snapshot = json.loads(legacy.read_text(encoding="utf-8"))
            return -1, iter([["k", *k] for k in snapshot["keys"]] + [["q", *r] for r in snapshot["requests"]])
        return -1, iter(())

    def replay(self, start: int, stop: int | None = None) -> Iterator[list]:
        """The changes of segments ``start <= seq < stop``, in order; unreadable lines are counted
        (``torn``, ``skipped``) and left out."""
        for seq, path in self.segments():
            if seq < start or (stop is not None and seq >= stop):
                continue
            with open(path, encoding="utf-8") as fh:
                for line in fh:
                    if not line.endswith("\n"):
                        self.torn += 1
                        continue
                    try:
                        op = json.loads(line)
                    except ValueError:
                        self.skipped += 1
                        continue
                    if isinstance(op, list) and op:
                        yield op
                    else:
                        self.skipped += 1

    # -- writing --------------------------------------------------------------------------------

    def open_next(self) -> int:
        """Start a new segment after every one on disk (and after ``self.seq``); returns its seq."""
        on_disk = [s for s, _ in self.segments()]
        self.close()
        self.seq = max([self.seq, *on_disk]) + 1
        # O_DSYNC: a write returns once it is on disk, in one system call (one release of the GIL)
        self._fd = os.open(self.dir / f"journal.{self.seq:08d}.jsonl",
                           os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_DSYNC, 0o644)
        _fsync_dir(self.dir)
        self.lines = 0
        self.broken_tail = False  # the last write failed part-way (see append)
        return self.seq

    def append(self, op: list | str) -> None:
        """One change (a JSON list, or its text), on disk when this returns."""
        assert self._fd is not None, "journal closed"
        text = (op if isinstance(op, str) else json.dumps(op)) + "\n"
        # after a failed write (disk full) the segment may end in part of a line: a newline first,
        # so that this line is not glued onto the fragment and dropped with it at the next load
        data = memoryview((("\n" if self.broken_tail else "") + text).encode())
        self.broken_tail = True
        while data:  # acknowledged = on disk (O_DSYNC)
            data = data[os.write(self._fd, data):]
        self.broken_tail = False
        self.lines += 1

    def write_snapshot(self, lines: Iterable[str], next_seq: int, header: dict | None = None) -> None:
        """Replace the snapshot with ``lines`` (each one JSON record, no newline) covering every
        segment below ``next_seq``, then delete those segments."""
        tmp = self.dir / f".{SNAPSHOT}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(json.dumps({"next_seq": next_seq, **(header or {})}) + "\n")
            for line in lines:
                fh.write(line)
                fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.dir / SNAPSHOT)
        _fsync_dir(self.dir)
        for seq, path in self.segments():
            if seq < next_seq:
                path.unlink()
        (self.dir / LEGACY_SNAPSHOT).unlink(missing_ok=True)
        _fsync_dir(self.dir)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None


def _records(fh) -> Iterator[list]:
    with fh:
        for line in fh:
            yield json.loads(line)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
