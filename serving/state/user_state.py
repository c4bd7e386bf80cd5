"""Real-time user state: what a shopper did since the models were trained, read by the next request.

Every ``/feedback`` event that the app accepts becomes part of the shopper's history at once, so
the next ``/recommend`` -- from any Ingress replica -- sees it in the retriever's user tower, the
ranker's history and funnel stages and the exclusion rules. The same store keeps the **request
registry**: which items each issued request showed, so feedback for a request the app never
issued, or for an item it did not show, is refused, and the same (request, item, event) counts
once.

One interface (:class:`UserState`), two backends that pass the same tests
(``tests/unit/serving/state/test_user_state.py``):

* :class:`~serving.state.memory.MemoryUserState` -- embedded, no server: dicts in the process that owns it (the
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
* for a shopper who has stopped engaging (:meth:`UserView.stale`), the items shown in the last
  ``exclude_shown`` answers and not engaged with are excluded as well.

Keys: ``u:<user id>`` for users the catalogue knows; ``a:<user id>`` for user ids it does not
know and ``s:<session id>`` for anonymous sessions -- anyone can make those up, so they expire
``session_ttl_s`` after their last use and at most ``max_ephemeral_keys`` are held (least
recently used dropped). Known users expire after ``user_ttl_s`` unused. Memory per key is
bounded: the last ``max_events`` events, the last ``answers_kept`` answers of at most
``max_answer_ids`` ids and ``max_shown_bytes`` JSON bytes together (oldest dropped). Plain
Python, no Ray.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

HISTORY_EVENTS = ("click", "cart", "purchase")


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


def stale_strength(surprise: float, alpha: float, full_alpha: float) -> float:
    """How hard to explore a shopper whose newest ignored answers have this
    :meth:`UserView.surprise`: 0 while their probability is at least
    ``alpha`` (not stale); above that, the surprise as a share of ``-ln(full_alpha)``, capped at 1
    (full: the whole exploration floor, the spread, and the ignored items excluded). A steady
    shopper's one ignored answer is as likely as 0.2 under position bias, and treating it as a
    sure change of taste explored steady shoppers away from what they like (benchmarks/closed_loop.py,
    the hard simulator); a second ignored answer, or one at a high rate, reaches the full strength.
    ``full_alpha >= alpha``: full as soon as stale."""
    if alpha <= 0 or surprise <= -math.log(alpha):
        return 0.0
    if full_alpha >= alpha:
        return 1.0
    return min(1.0, surprise / -math.log(full_alpha))


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
        """Has this shopper stopped engaging? True when :meth:`surprise` exceeds ``-ln(alpha)``:
        the newest ignored answers would have had probability below ``alpha`` at the shopper's
        own engagement rate (alpha 0 switches the rule off)."""
        return stale_strength(self.surprise(), alpha, alpha) > 0

    def surprise(self) -> float:
        """How unlikely the newest run of ignored answers is for this shopper, as ``-ln`` of its
        probability: ``n * -ln(1 - p)``, where ``n`` is the number of items in the newest answers
        that got nothing and ``p`` the share of items the shopper engaged with in the remembered
        answers *before* that run (the run itself would drag its own reference down: after a drift,
        two ignored answers out of five made the window's rate so low that the run no longer
        looked unlikely). 0 -- no evidence -- for a shopper with nothing remembered, who never
        engaged, or who engaged with the newest answer; infinite for one who engaged before the
        remembered answers and with none of them (no rate to judge by, but they have stopped).
        Whole answers count, not the items after the last click: a steady shopper who clicked the
        second item of an answer and ignored the eight below it has not stopped engaging
        (benchmarks/closed_loop.py)."""
        shown = sum(len(answer) for answer in self.shown)
        if not shown:
            return 0.0
        liked = {e.item_id for e in self.events if e.event in HISTORY_EVENTS}
        engaged = sum(i in liked for answer in self.shown for i in answer)
        if not engaged:  # nothing in the remembered answers: stale if they engaged before them
            return math.inf if liked else 0.0
        run = 0
        for answer in reversed(self.shown):
            if any(i in liked for i in answer):
                break
            run += len(answer)
        if not run:
            return 0.0
        rate = engaged / (shown - run)  # engaged > 0, so some answer before the run engaged
        return run * -math.log1p(-rate) if rate < 1 else math.inf

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
