"""Real-time user state: what a shopper did since the models were trained, read by the next request.

Every ``/feedback`` event that the app accepts becomes part of the shopper's history at once, so
the next ``/recommend`` -- from any Ingress replica -- sees it in the retriever's user tower, the
ranker's history and funnel stages and the exclusion rules. The same store keeps the **request
registry**: which items each issued request showed, so feedback for a request the app never
issued, or for an item it did not show, is refused, and the same (request, item, event) counts
once.

One interface (:class:`UserState`), two backends that pass the same tests
(``tests/unit/serving/state/test_user_state.py``):

* :class:`MemoryUserState` -- embedded, no server: dicts in the process that owns it (the
  ``UserStateStore`` Serve deployment), every change appended to a journal and ``fsync``-ed
  before it is acknowledged; a background thread folds the journal into a snapshot
  (:mod:`serving.state.journal`), both replayed on start;
* :class:`~serving.state.redis_backend.RedisUserState` -- for multi-node deployments: lists and keys in Redis (durability
  is then Redis's: run it with ``appendonly yes`` / ``appendfsync always`` for the same promise).

What goes into a history, and what is excluded from the next answers (see README, "The loop"):

* ``click``, ``cart`` and ``purchase`` append the item to the history (``HISTORY_EVENTS``); a
  ``view`` is logged and rewards nothing, but does not enter the history (otherwise whatever was
  shown would feed itself back);
* history items are never recommended again (the retriever excludes them, as in training);
* items shown in the last ``exclude_shown`` answers and not engaged with are excluded as well.

Keys: ``u:<user id>`` for users the catalogue knows; ``a:<user id>`` for user ids it does not
know and ``s:<session id>`` for anonymous sessions -- anyone can make those up, so they expire
``session_ttl_s`` after their last use and at most ``max_ephemeral_keys`` are held (least
recently used dropped). Known users expire after ``user_ttl_s`` unused. Memory per key is
bounded: the last ``max_events`` events, the last ``answers_kept`` answers of at most
``max_answer_ids`` ids and ``max_shown_bytes`` JSON bytes together (oldest dropped). Plain
Python, no Ray.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Protocol

from serving.state.journal import Journal

HISTORY_EVENTS = ("click", "cart", "purchase")
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class UserStateConfig:
    max_events: int = 50  # per key: the newest events kept
    exclude_shown: int = 3  # answers whose ignored items are not shown again
    shown_window: int = 5  # answers remembered (the policy's recent click rate near each item)
    session_ttl_s: float = 1800.0  # sessions and unknown user ids (s:, a:) expire after this long unused
    request_ttl_s: float = 86_400.0  # feedback is accepted this long after the request
    max_requests: int = 100_000  # request registry bound (embedded backend; oldest dropped)
    max_keys: int = 1_000_000  # known users held (embedded backend; least recently used dropped)
    compact_every: int = 20_000  # journal lines between snapshots (embedded backend, in the background)
    user_ttl_s: float = 30 * 86_400.0  # known users' (u:) live state expires after this long unused
    max_ephemeral_keys: int = 100_000  # sessions + unknown user ids held (least recently used dropped)
    max_answer_ids: int = 100  # ids kept of each remembered answer (its top positions)
    max_shown_bytes: int = 16_384  # remembered answers per key, JSON bytes together (oldest dropped)

    @property
    def answers_kept(self) -> int:
        return max(self.exclude_shown, self.shown_window)

    def __post_init__(self):
        if min(self.max_events, self.max_requests, self.max_keys, self.compact_every, self.max_ephemeral_keys,
               self.max_answer_ids) < 1 or self.exclude_shown < 0 or self.shown_window < 0:
            raise ValueError("max_events, max_requests, max_keys, compact_every, max_ephemeral_keys and "
                             "max_answer_ids must be >= 1, exclude_shown and shown_window >= 0")
        if min(self.session_ttl_s, self.request_ttl_s, self.user_ttl_s) <= 0:
            raise ValueError("session_ttl_s, request_ttl_s and user_ttl_s must be > 0")
        if self.max_shown_bytes < 2:
            raise ValueError("max_shown_bytes must be >= 2 (an empty answer)")

    @classmethod
    def tiny(cls) -> UserStateConfig:
        return cls(max_events=5, exclude_shown=1, shown_window=1, session_ttl_s=60, request_ttl_s=60, max_requests=10,
                   max_keys=10, compact_every=7, max_ephemeral_keys=10)


def is_ephemeral(key: str) -> bool:
    """Sessions (``s:``) and user ids the catalogue does not know (``a:``): anyone can make them up."""
    return key.startswith(("s:", "a:"))


def clip_answer(items: list[str], config: UserStateConfig) -> str:
    """An answer as it is remembered (JSON): its first ``max_answer_ids`` ids, fewer if their JSON
    would pass ``max_shown_bytes``."""
    kept = items[:config.max_answer_ids]
    text = json.dumps(kept)
    if len(text) <= config.max_shown_bytes:
        return text
    size = 2 + sum(len(json.dumps(x)) for x in kept) + 2 * max(len(kept) - 1, 0)  # json.dumps' "[a, b]"
    while kept and size > config.max_shown_bytes:
        size -= len(json.dumps(kept.pop())) + (2 if kept else 0)
    return json.dumps(kept)


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


# -- embedded ---------------------------------------------------------------------------------------


class _Key:
    """One key's state: events and answers as the JSON strings Redis would hold (compact)."""

    __slots__ = ("events", "shown", "shown_bytes", "touched")

    def __init__(self, config: UserStateConfig, touched: float):
        self.events: collections.deque[str] = collections.deque(maxlen=config.max_events)
        self.shown: collections.deque[str] = collections.deque()
        self.shown_bytes = 0
        self.touched = touched

    def remember(self, answer: str, config: UserStateConfig) -> None:
        self.shown.append(answer)
        self.shown_bytes += len(answer)
        while len(self.shown) > config.answers_kept or (self.shown_bytes > config.max_shown_bytes
                                                         and len(self.shown) > 1):
            self.shown_bytes -= len(self.shown.popleft())


class _Request:
    __slots__ = ("key", "items", "at", "done")

    def __init__(self, key: str, items: str, at: float, done: set[str] | None = None):
        self.key, self.items, self.at, self.done = key, items, at, done  # items: JSON; done: "item|event"


class MemoryUserState:
    """The embedded backend. ``directory`` holds its snapshot and journal
    (:mod:`serving.state.journal`); without it the state lives in memory only (tests of the
    logic, replays). A request appends one journal line; a background thread folds the journal
    into a new snapshot every ``compact_every`` lines, off the lock. Thread-safe."""

    def __init__(self, config: UserStateConfig, directory: str | None = None):
        self.config = config
        self.lock = threading.RLock()
        # known users (u:) and made-up keys (s:, a:), each least recently used first
        self.users: collections.OrderedDict[str, _Key] = collections.OrderedDict()
        self.ephemeral: collections.OrderedDict[str, _Key] = collections.OrderedDict()
        self.requests: collections.OrderedDict[str, _Request] = collections.OrderedDict()
        self.journal = Journal(directory) if directory else None
        self.compactions = 0
        self.last_compaction_s = 0.0  # how long the last snapshot took (off the request path)
        self._compacting = threading.Lock()
        self._due, self._stop = threading.Event(), threading.Event()
        self._compactor: threading.Thread | None = None
        if self.journal is not None:
            start, records = self.journal.snapshot()
            self._restore(records)
            for op in self.journal.replay(start):
                self._apply(op)
            self.journal.open_next()
            self._compactor = threading.Thread(target=self._compact_when_due, name="user-state-compactor",
                                               daemon=True)
            self._compactor.start()

    @property
    def compacting(self) -> bool:
        """A snapshot is being written, or one is due."""
        return self._compacting.locked() or self._due.is_set()

    @property
    def skipped(self) -> int:
        """Journal lines that could not be read on start (corruption; torn last lines are not counted)."""
        return self.journal.skipped if self.journal else 0

    # -- interface ------------------------------------------------------------------------------

    def view(self, key: str, now: float | None = None) -> UserView:
        now = time.time() if now is None else float(now)
        with self.lock:
            k = self._table(key).get(key)
            if k is None or self._expired(key, k, now):
                return UserView()
            events, shown = list(k.events), list(k.shown)
        return UserView(tuple(StateEvent(*json.loads(e)) for e in events), tuple(tuple(json.loads(a)) for a in shown))

    def issue(self, request_id: str, key: str, items: list[str], now: float | None = None) -> None:
        now = time.time() if now is None else float(now)
        items_json = json.dumps(list(items))
        with self.lock:
            self._write(f'["i", {json.dumps(request_id)}, {json.dumps(key)}, {items_json}, {now!r}]')
            self._apply_issue(request_id, key, list(items), now, items_json)

    def check(self, request_id: str, item_id: str, event: str, now: float | None = None) -> Recorded:
        now = time.time() if now is None else float(now)
        with self.lock:
            req = self.requests.get(request_id)
            if req is None or now - req.at > self.config.request_ttl_s:
                return Recorded(Outcome.UNKNOWN_REQUEST)
            if item_id not in json.loads(req.items):
                return Recorded(Outcome.NOT_SHOWN, req.key)
            if req.done and f"{item_id}|{event}" in req.done:
                return Recorded(Outcome.DUPLICATE, req.key)
            return Recorded(Outcome.RECORDED, req.key)

    def record(self, request_id: str, item_id: str, event: str, now: float | None = None) -> Recorded:
        now = time.time() if now is None else float(now)
        with self.lock:
            checked = self.check(request_id, item_id, event, now)
            if checked.outcome is not Outcome.RECORDED:
                return checked
            self._write(["r", request_id, item_id, event, now])
            self._apply_record(request_id, item_id, event, now)
            return Recorded(Outcome.RECORDED, checked.key)

    def ping(self) -> bool:
        return True

    def close(self, compact: bool = True) -> None:
        """Stop the compactor and close the journal; ``compact``: fold it into a snapshot first
        (without: the next start replays it, as after a crash)."""
        if self._compactor is not None:
            self._stop.set()
            self._due.set()
            self._compactor.join()
            self._compactor = None
        if self.journal is not None and self.journal.is_open:
            if compact:
                self.compact()
            with self.lock:
                self.journal.close()

    def memory(self) -> dict:
        """What bounds the memory: keys held, events, registered requests and the JSON bytes they hold."""
        with self.lock:
            keys = [*self.users.values(), *self.ephemeral.values()]
            return {"keys": len(keys), "users": len(self.users), "ephemeral": len(self.ephemeral),
                    "events": sum(len(k.events) for k in keys), "requests": len(self.requests),
                    "bytes": sum(sum(map(len, k.events)) + k.shown_bytes for k in keys)
                    + sum(len(r.items) for r in self.requests.values()),
                    "compactions": self.compactions}

    # -- state changes (also replayed from the journal) ------------------------------------------

    def _table(self, key: str) -> collections.OrderedDict[str, _Key]:
        return self.ephemeral if is_ephemeral(key) else self.users

    def _expired(self, key: str, k: _Key, now: float) -> bool:
        return now - k.touched > (self.config.session_ttl_s if is_ephemeral(key) else self.config.user_ttl_s)

    def _touch(self, key: str, now: float) -> _Key:
        table = self._table(key)
        k = table.get(key)
        if k is not None and self._expired(key, k, now):
            del table[key]  # expired: starts afresh
            k = None
        if k is None:
            k = table[key] = _Key(self.config, now)
        table.move_to_end(key)
        k.touched = now
        cap = self.config.max_ephemeral_keys if table is self.ephemeral else self.config.max_keys
        while table:  # least recently used first: drop while over the cap or expired
            first = next(iter(table))
            if len(table) <= cap and not self._expired(first, table[first], now):
                break
            del table[first]
        return k

    def _apply_issue(self, request_id: str, key: str, items: list[str], now: float, items_json: str = "") -> None:
        items_json = items_json or json.dumps(items)
        k = self._touch(key, now)
        if self.config.answers_kept:
            fits = len(items) <= self.config.max_answer_ids and len(items_json) <= self.config.max_shown_bytes
            k.remember(items_json if fits else clip_answer(items, self.config), self.config)
        self.requests[request_id] = _Request(key, items_json, now)
        self.requests.move_to_end(request_id)
        while self.requests:
            first = next(iter(self.requests.values()))
            if len(self.requests) <= self.config.max_requests and now - first.at <= self.config.request_ttl_s:
                break
            self.requests.popitem(last=False)

    def _apply_record(self, request_id: str, item_id: str, event: str, now: float) -> None:
        req = self.requests[request_id]
        if req.done is None:
            req.done = set()
        req.done.add(f"{item_id}|{event}")
        self._touch(req.key, now).events.append(json.dumps([item_id, event, now]))

    def _apply(self, op: list) -> None:
        """One journal line (unreadable ones are counted as skipped)."""
        try:
            if op[0] == "i":
                self._apply_issue(str(op[1]), str(op[2]), list(op[3]), float(op[4]))
            elif op[0] == "r" and op[1] in self.requests:
                self._apply_record(str(op[1]), str(op[2]), str(op[3]), float(op[4]))
        except (ValueError, IndexError, TypeError):
            if self.journal is not None:
                self.journal.skipped += 1

    # -- durability -----------------------------------------------------------------------------

    def _write(self, op: list | str) -> None:
        if self.journal is None:
            return
        self.journal.append(op)
        if self.journal.lines >= self.config.compact_every:
            self._due.set()  # the compactor thread takes it from here

    def _compact_when_due(self) -> None:
        while True:
            self._due.wait()
            if self._stop.is_set():
                return
            self._due.clear()
            try:
                self.compact()
            except Exception:  # the journal still holds every change: try again when due
                logger.exception("user state: compaction failed (the journal keeps growing until one succeeds)")

    def compact(self) -> None:
        """Fold the journal into a new snapshot. Under the lock only a new segment is started; the
        snapshot is rebuilt from the old one and the sealed segments in a scratch state."""
        assert self.journal is not None
        with self._compacting:
            with self.lock:
                if not self.journal.is_open or self.journal.lines == 0:
                    return
                upto = self.journal.open_next()
            began = time.perf_counter()
            files = Journal(self.journal.dir)  # a reader: lines it cannot read were counted on start
            start, records = files.snapshot()
            scratch = MemoryUserState(self.config)
            scratch._restore(records)
            for op in files.replay(start, upto):
                scratch._apply(op)
            self.journal.write_snapshot(scratch._records(), upto, {"config": asdict(self.config)})
            self.compactions += 1
            self.last_compaction_s = time.perf_counter() - began

    def _records(self):
        """The state as snapshot lines: events, answers and a request's items stay JSON texts."""
        for key, k in [*self.users.items(), *self.ephemeral.items()]:
            yield json.dumps(["k", key, list(k.events), list(k.shown), k.touched])
        for rid, r in self.requests.items():
            yield json.dumps(["q", rid, r.key, r.items, r.at, sorted(r.done or ())])

    def _restore(self, records) -> None:
        """Snapshot records; lists where texts are expected come from the earlier layout."""
        def text(x) -> str:
            return x if isinstance(x, str) else json.dumps(x)

        for rec in records:
            if rec[0] == "k":
                _, key, events, shown, touched = rec
                k = self._table(key)[key] = _Key(self.config, float(touched))
                k.events.extend(map(text, events))
                for a in shown[-self.config.answers_kept:] if self.config.answers_kept else ():
                    k.remember(text(a), self.config)
            elif rec[0] == "q":
                _, rid, key, items, at, done = rec
                self.requests[rid] = _Request(key, text(items), float(at), set(done) or None)
