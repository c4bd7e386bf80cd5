"""Real-time user state: what a shopper did since the models were trained, read by the next request.

Every ``/feedback`` event that the app accepts becomes part of the shopper's history at once, so
the next ``/recommend`` -- from any Ingress replica -- sees it in the retriever's user tower, the
ranker's history and funnel stages and the exclusion rules. The same store keeps the **request
registry**: which items each issued request showed, so feedback for a request the app never
issued, or for an item it did not show, is refused, and the same (request, item, event) counts
once.

One interface (:class:`UserState`), two backends that pass the same tests
(``tests/unit/serving/test_user_state.py``):

* :class:`MemoryUserState` -- embedded, no server: dicts in the process that owns it (the
  ``UserStateStore`` Serve deployment), every change appended to a journal and ``fsync``-ed
  before it is acknowledged, compacted into a snapshot now and then, both replayed on start;
* :class:`~serving.user_state_redis.RedisUserState` -- for multi-node deployments: lists and keys in Redis (durability
  is then Redis's: run it with ``appendonly yes`` / ``appendfsync always`` for the same promise).

What goes into a history, and what is excluded from the next answers (see README, "The loop"):

* ``click``, ``cart`` and ``purchase`` append the item to the history (``HISTORY_EVENTS``); a
  ``view`` is logged and rewards nothing, but does not enter the history (otherwise whatever was
  shown would feed itself back);
* history items are never recommended again (the retriever excludes them, as in training);
* items shown in the last ``exclude_shown`` answers and not engaged with are excluded as well.

Keys: ``u:<user id>`` for known or new users, ``s:<session id>`` for anonymous sessions, which
expire ``session_ttl_s`` after their last use. Memory per key is bounded (last ``max_events``
events, last ``exclude_shown`` answers). Plain Python, no Ray.
"""

from __future__ import annotations

import collections
import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Protocol

from training import storage

HISTORY_EVENTS = ("click", "cart", "purchase")


@dataclass(frozen=True)
class UserStateConfig:
    max_events: int = 50  # per key: the newest events kept
    exclude_shown: int = 3  # answers whose ignored items are not shown again
    shown_window: int = 5  # answers remembered (the policy's recent click rate near each item)
    session_ttl_s: float = 1800.0  # anonymous sessions expire after this long unused
    request_ttl_s: float = 86_400.0  # feedback is accepted this long after the request
    max_requests: int = 100_000  # request registry bound (embedded backend; oldest dropped)
    max_keys: int = 1_000_000  # users + sessions held (embedded backend; least recently used dropped)
    compact_every: int = 20_000  # journal lines between snapshots (embedded backend)

    @property
    def answers_kept(self) -> int:
        return max(self.exclude_shown, self.shown_window)

    def __post_init__(self):
        if self.max_events < 1 or self.exclude_shown < 0 or self.shown_window < 0 or self.max_requests < 1 \
                or self.max_keys < 1:
            raise ValueError("max_events, max_requests and max_keys must be >= 1, exclude_shown and shown_window >= 0")
        if self.session_ttl_s <= 0 or self.request_ttl_s <= 0:
            raise ValueError("session_ttl_s and request_ttl_s must be > 0")

    @classmethod
    def tiny(cls) -> UserStateConfig:
        return cls(max_events=5, exclude_shown=1, shown_window=1, session_ttl_s=60, request_ttl_s=60, max_requests=10,
                   max_keys=10, compact_every=7)


@dataclass(frozen=True)
class StateEvent:
    item_id: str
    event: str
    ts: float  # seconds since the epoch

    def to_list(self) -> list:
        return [self.item_id, self.event, self.ts]


@dataclass(frozen=True)
class UserView:
    """What one ``/recommend`` reads: the key's recent events (oldest first) and the item ids of
    its last answers (oldest first)."""

    events: tuple[StateEvent, ...] = ()
    shown: tuple[tuple[str, ...], ...] = ()

    def history(self) -> list[str]:
        """Items engaged with (``HISTORY_EVENTS``), first occurrence each, oldest first."""
        seen: dict[str, None] = {}
        for e in self.events:
            if e.event in HISTORY_EVENTS:
                seen.setdefault(e.item_id, None)
        return list(seen)

    def deepest(self) -> dict[str, str]:
        """The deepest funnel event per engaged item (purchase > cart > click)."""
        out: dict[str, str] = {}
        for e in self.events:
            if e.event in HISTORY_EVENTS and HISTORY_EVENTS.index(e.event) >= HISTORY_EVENTS.index(
                    out.get(e.item_id, "click")):
                out[e.item_id] = e.event
        return out

    def ignored(self, answers: int | None = None) -> set[str]:
        """Items of the last ``answers`` answers (all remembered: None) that got no event at all."""
        touched = {e.item_id for e in self.events}
        recent = self.shown if answers is None else self.shown[len(self.shown) - answers:] if answers else ()
        return {i for answer in recent for i in answer if i not in touched}

    def stale(self, alpha: float) -> bool:
        """Has this shopper stopped engaging? Over the remembered answers the shopper engaged with a
        share ``p`` of the items shown; the newest ``n`` items in a row got nothing. Stale when a run
        that long would have had probability ``(1 - p) ** n < alpha`` at their own rate -- so a
        shopper who never engaged is not stale, and at a shop's usual 2-3 % click rate it takes far
        more ignored items than at 25 %."""
        seen = self.impressions()
        engaged = sum(c for _, c in seen)
        if not engaged or alpha <= 0:
            return False
        run = next((i for i, (_, c) in enumerate(reversed(seen)) if c), len(seen))
        return (1 - engaged / len(seen)) ** run < alpha

    def impressions(self) -> list[tuple[str, bool]]:
        """``(item, clicked or deeper)`` for every item of the remembered answers, oldest first."""
        engaged = {e.item_id for e in self.events if e.event in HISTORY_EVENTS}
        return [(i, i in engaged) for answer in self.shown for i in answer]


class StateUnavailable(Exception):
    """The user-state backend did not answer in time (or at all)."""


class Outcome(str, Enum):
    RECORDED = "recorded"
    UNKNOWN_REQUEST = "unknown_request"  # never issued by this app, or expired
    NOT_SHOWN = "not_shown"  # the request did not show this item
    DUPLICATE = "duplicate"  # this (request, item, event) was recorded before


@dataclass(frozen=True)
class Recorded:
    outcome: Outcome
    key: str | None = None  # whose history it went to


class UserState(Protocol):
    config: UserStateConfig

    def view(self, key: str) -> UserView: ...

    def issue(self, request_id: str, key: str, items: list[str], now: float | None = None) -> None:
        """Register an answer: ``items`` were shown to ``key`` under ``request_id``."""

    def check(self, request_id: str, item_id: str, event: str, now: float | None = None) -> Recorded:
        """What :meth:`record` would answer now, changing nothing (``RECORDED``: it would be accepted)."""

    def record(self, request_id: str, item_id: str, event: str, now: float | None = None) -> Recorded:
        """Accept one feedback event if its request showed the item and it is new."""

    def ping(self) -> bool: ...

    def close(self) -> None: ...


def is_session(key: str) -> bool:
    return key.startswith("s:")


# -- embedded ---------------------------------------------------------------------------------------


class MemoryUserState:
    """The embedded backend. ``directory`` holds ``snapshot.json`` and ``journal.jsonl``; without
    it the state lives in memory only (tests of the logic). Thread-safe."""

    def __init__(self, config: UserStateConfig, directory: str | None = None):
        self.config = config
        self.dir = Path(directory) if directory else None
        self.lock = threading.RLock()
        self.events: collections.OrderedDict[str, collections.deque] = collections.OrderedDict()
        self.shown: dict[str, collections.deque] = {}
        self.touched: dict[str, float] = {}
        # request id -> (key, items, issued at, recorded "item|event" set)
        self.requests: collections.OrderedDict[str, tuple[str, tuple[str, ...], float, set[str]]] = \
            collections.OrderedDict()
        self.skipped = 0  # journal lines that could not be read (reported, not fatal)
        self._journal = None
        self._lines = 0
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._load()
            self._journal = open(self.dir / "journal.jsonl", "a", encoding="utf-8")  # noqa: SIM115

    # -- interface ------------------------------------------------------------------------------

    def view(self, key: str, now: float | None = None) -> UserView:
        now = time.time() if now is None else now
        with self.lock:
            if key not in self.events or self._expired(key, now):
                return UserView()
            return UserView(tuple(StateEvent(*e) for e in self.events[key]),
                            tuple(tuple(a) for a in self.shown.get(key, ())))

    def issue(self, request_id: str, key: str, items: list[str], now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self.lock:
            self._write(["i", request_id, key, list(items), now])
            self._apply_issue(request_id, key, tuple(items), now)
            self._maybe_compact()

    def check(self, request_id: str, item_id: str, event: str, now: float | None = None) -> Recorded:
        now = time.time() if now is None else now
        with self.lock:
            req = self.requests.get(request_id)
            if req is None or now - req[2] > self.config.request_ttl_s:
                return Recorded(Outcome.UNKNOWN_REQUEST)
            key, items, _, done = req
            if item_id not in items:
                return Recorded(Outcome.NOT_SHOWN, key)
            if f"{item_id}|{event}" in done:
                return Recorded(Outcome.DUPLICATE, key)
            return Recorded(Outcome.RECORDED, key)

    def record(self, request_id: str, item_id: str, event: str, now: float | None = None) -> Recorded:
        now = time.time() if now is None else now
        with self.lock:
            checked = self.check(request_id, item_id, event, now)
            if checked.outcome is not Outcome.RECORDED:
                return checked
            self._write(["r", request_id, item_id, event, now])
            self._apply_record(request_id, item_id, event, now)
            self._maybe_compact()
            return Recorded(Outcome.RECORDED, checked.key)

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        with self.lock:
            if self._journal is not None and not self._journal.closed:
                self._compact()
                self._journal.close()

    def memory(self) -> dict:
        """Counts that bound the memory (keys, events, registered requests)."""
        with self.lock:
            return {"keys": len(self.events), "events": sum(len(d) for d in self.events.values()),
                    "requests": len(self.requests)}

    # -- state changes (also replayed from the journal) ------------------------------------------

    def _touch(self, key: str, now: float) -> None:
        if key not in self.events:
            self.events[key] = collections.deque(maxlen=self.config.max_events)
        self.events.move_to_end(key)
        self.touched[key] = now
        while len(self.events) > self.config.max_keys:
            old, _ = self.events.popitem(last=False)
            self.shown.pop(old, None)
            self.touched.pop(old, None)

    def _expired(self, key: str, now: float) -> bool:
        return is_session(key) and now - self.touched.get(key, now) > self.config.session_ttl_s

    def _apply_issue(self, request_id: str, key: str, items: tuple[str, ...], now: float) -> None:
        if self._expired(key, now):
            self._forget(key)
        self._touch(key, now)
        if self.config.answers_kept:
            self.shown.setdefault(key, collections.deque(maxlen=self.config.answers_kept)).append(items)
        self.requests[request_id] = (key, items, now, set())
        while len(self.requests) > self.config.max_requests:
            self.requests.popitem(last=False)

    def _apply_record(self, request_id: str, item_id: str, event: str, now: float) -> None:
        key, _, _, done = self.requests[request_id]
        done.add(f"{item_id}|{event}")
        self._touch(key, now)
        self.events[key].append((item_id, event, now))

    def _forget(self, key: str) -> None:
        self.events.pop(key, None)
        self.shown.pop(key, None)
        self.touched.pop(key, None)

    # -- durability -----------------------------------------------------------------------------

    def _write(self, line: list) -> None:
        if self._journal is None:
            return
        self._journal.write(json.dumps(line) + "\n")
        self._journal.flush()
        os.fsync(self._journal.fileno())  # acknowledged = on disk
        self._lines += 1

    def _maybe_compact(self) -> None:
        # after the change is applied: the snapshot must hold the line the journal is cut after
        if self._journal is not None and self._lines >= self.config.compact_every:
            self._compact()

    def _snapshot(self) -> dict:
        return {"config": asdict(self.config),
                "keys": [[k, list(map(list, d)), [list(a) for a in self.shown.get(k, ())], self.touched.get(k, 0.0)]
                         for k, d in self.events.items()],
                "requests": [[r, k, list(items), t, sorted(done)] for r, (k, items, t, done) in self.requests.items()]}

    def _compact(self) -> None:
        """Snapshot the whole state (written whole, fsynced, renamed), then start a new journal."""
        assert self.dir is not None
        storage.atomic_write(str(self.dir / "snapshot.json"), json.dumps(self._snapshot()).encode())
        if self._journal is not None:
            self._journal.close()
        self._journal = open(self.dir / "journal.jsonl", "w", encoding="utf-8")  # noqa: SIM115
        os.fsync(self._journal.fileno())
        _fsync_dir(self.dir)
        self._lines = 0

    def _load(self) -> None:
        assert self.dir is not None
        snap = self.dir / "snapshot.json"
        if snap.exists():
            doc = json.loads(snap.read_text(encoding="utf-8"))
            for key, events, shown, touched in doc["keys"]:
                self.events[key] = collections.deque((tuple(e) for e in events), maxlen=self.config.max_events)
                if self.config.answers_kept:
                    self.shown[key] = collections.deque((tuple(a) for a in shown), maxlen=self.config.answers_kept)
                self.touched[key] = touched
            for rid, key, items, t, done in doc["requests"]:
                self.requests[rid] = (key, tuple(items), t, set(done))
        journal = self.dir / "journal.jsonl"
        if journal.exists():
            with open(journal, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        op = json.loads(line)
                        if op[0] == "i":
                            self._apply_issue(op[1], op[2], tuple(op[3]), op[4])
                        elif op[0] == "r" and op[1] in self.requests:
                            self._apply_record(op[1], op[2], op[3], op[4])
                    except (ValueError, IndexError, TypeError):
                        self.skipped += 1  # a torn last line was never acknowledged; anything else is reported
            self._lines = 0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
