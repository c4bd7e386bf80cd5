"""The embedded user-state backend (:class:`MemoryUserState`): dicts in the process that owns it
(the ``UserStateStore`` Serve deployment), every change journaled and ``fsync``-ed before it is
acknowledged, folded into a snapshot in the background (:mod:`serving.state.journal`). The
interface, the keys and the bounds it keeps are :mod:`serving.state.user_state`'s. Plain Python, no Ray.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from dataclasses import asdict

from serving.state.journal import Journal
from serving.state.user_state import (
    Outcome,
    Recorded,
    StateEvent,
    UserStateConfig,
    UserView,
    clip_answer,
    is_ephemeral,
)

logger = logging.getLogger(__name__)


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
