"""Train / validation / test splits, built deterministically from a dataset.

Three kinds:

``loo``   leave-one-out by time per user: the last item is the test target, the second last
          the validation target, everything earlier is training (the S3-Rec/SASRec protocol).
          With ``basket=True`` the unit is the last *basket* (all items sharing the user's last
          timestamp, e.g. one invoice): for basket data, item-level leave-one-out puts the
          target's basket-mates into the history, which makes "next item" far easier than it
          is in practice.
``time``  a global time split: events at or after ``test_start`` are test targets; events in
          ``[valid_start, test_start)`` are validation targets. Each user's targets are the
          distinct items they touched in the window that are not already in their history.
          Cut-offs default to the 80 % / 90 % quantiles of event time.
``cold``  cold items: the newest ``cold_fraction`` of items (by first interaction) never
          appear in training; half of them (seeded) are validation items, half test items.
          Targets are a user's cold items; candidates are the cold items (``candidates='cold'``)
          or the whole catalogue (``'all'``).

A split yields an :class:`EvalTask` per part: what a model may train on, and whom to evaluate
with which history and targets. Definitions (not the materialised rows) are stored in the
dataset manifest, so a split is reproducible from the data alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd

from training.common.errors import DataError
from training.data.interactions import Interactions

KINDS = ("loo", "time", "cold")


@dataclass(frozen=True)
class SplitSpec:
    kind: str = "loo"
    event_types: tuple[str, ...] | None = None
    dedupe: bool = True
    min_history: int = 1
    test_start: str | None = None  # ISO date for 'time'; default: 90 % quantile of event time
    valid_start: str | None = None  # default: 80 % quantile
    cold_fraction: float = 0.1
    candidates: str = "cold"
    basket: bool = False  # loo: hold out the last basket (same timestamp), not the last item
    seed: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise DataError(f"split: unknown kind '{self.kind}' (expected one of {', '.join(KINDS)})")
        if not 0 < self.cold_fraction < 1:
            raise DataError(f"split: cold_fraction must be in (0, 1), got {self.cold_fraction}")
        if self.candidates not in ("cold", "all"):
            raise DataError(f"split: candidates must be 'cold' or 'all', got '{self.candidates}'")

    @classmethod
    def from_dict(cls, d: dict) -> SplitSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise DataError(f"split: unknown field(s) {sorted(unknown)}")
        d = dict(d)
        if d.get("event_types") is not None:
            d["event_types"] = tuple(d["event_types"])
        return cls(**d)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if d["event_types"] is not None:
            d["event_types"] = list(d["event_types"])
        return d


@dataclass(frozen=True)
class EvalTask:
    """One part (``valid`` or ``test``) of a split.

    Attributes:
        train: every user's training interactions (what a model may fit on).
        users: the evaluated users.
        history: their input sequences (row ``i`` is ``users[i]``); excluded from ranking.
        targets: their target items (row ``i`` is ``users[i]``).
        candidates: boolean mask of rankable items, or ``None`` for the whole catalogue.
        full: all interactions, targets included (only for "popularity over everything").
    """

    name: str
    part: str
    train: Interactions
    users: np.ndarray
    history: Interactions
    targets: Interactions
    candidates: np.ndarray | None
    full: Interactions
    info: dict

    @property
    def num_items(self) -> int:
        return self.train.num_items

    def sample_users(self, n: int, seed: int = 0) -> EvalTask:
        """The same task over a fixed seeded sample of ``n`` users (all of them if ``n`` is 0 or
        not smaller than the user count), e.g. for faster per-epoch validation."""
        if not n or n >= len(self.users):
            return self
        return self.take(np.sort(np.random.default_rng(seed).choice(len(self.users), n, replace=False)))

    def take(self, rows: np.ndarray) -> EvalTask:
        """The same task over the evaluated users at positions ``rows``."""
        return dataclasses.replace(self, users=self.users[rows], history=self.history.take_users(rows),
                                   targets=self.targets.take_users(rows))


def _to_us(date: str) -> int:
    try:
        ts = pd.Timestamp(date)
    except (ValueError, TypeError) as exc:
        raise DataError(f"split: '{date}' is not a date (use ISO format, e.g. 2011-11-01)") from exc
    if ts.tzinfo is None:
        ts = ts.tz_localize("UTC")
    return int(ts.value // 1000)


def _iso(us: int) -> str:
    return pd.Timestamp(us * 1000, tz="UTC").isoformat()


def _task(name, part, train, users, history, targets, candidates, full, info) -> EvalTask:
    return EvalTask(name, part, train, users, history.take_users(users), targets.take_users(users),
                    candidates, full, info)


def _last_basket(seqs: Interactions) -> np.ndarray:
    """Mask of the positions that share their user's last timestamp."""
    lengths = seqs.lengths()
    last_time = np.zeros(seqs.num_users, dtype=np.int64)
    last_time[lengths > 0] = seqs.times[seqs.indptr[1:][lengths > 0] - 1]
    return seqs.times == np.repeat(last_time, lengths)


def _loo(seqs: Interactions, spec: SplitSpec, part: str, name: str) -> EvalTask:
    offset = 1 if part == "test" else 2
    if spec.basket:
        base = seqs if part == "test" else seqs.select(~_last_basket(seqs))
        in_target = _last_basket(base)
        history, targets = base.select(~in_target), base.select(in_target)
        users = np.flatnonzero((history.lengths() >= spec.min_history) & (targets.lengths() > 0))
        return _task(name, part, history, users.astype(np.int64), history, targets, None, seqs,
                     {"kind": "loo", "basket": True, "offset": offset})
    base = seqs.drop_last(offset - 1)  # what happened up to and including the target
    history = base.drop_last(1)
    users = np.flatnonzero(base.lengths() >= spec.min_history + 1).astype(np.int64)
    target_items = base.last(1)
    targets = Interactions(np.arange(seqs.num_users + 1, dtype=np.int64),
                           np.where(target_items >= 0, target_items, 0), np.zeros(seqs.num_users, np.int64),
                           seqs.num_items)
    return _task(name, part, history, users, history, targets, None, seqs,
                 {"kind": "loo", "offset": offset})


def _time(seqs: Interactions, spec: SplitSpec, part: str, name: str) -> EvalTask:
    if seqs.nnz == 0:
        raise DataError("split: no events")
    test_start = _to_us(spec.test_start) if spec.test_start else int(np.quantile(seqs.times, 0.9))
    valid_start = _to_us(spec.valid_start) if spec.valid_start else int(np.quantile(seqs.times, 0.8))
    if valid_start >= test_start:
        raise DataError(f"split: valid_start ({_iso(valid_start)}) must be before test_start "
                        f"({_iso(test_start)})")
    lo, hi = (test_start, np.iinfo(np.int64).max) if part == "test" else (valid_start, test_start)
    before = seqs.times < lo
    history = seqs.select(before)
    window = (seqs.times >= lo) & (seqs.times < hi)
    win = seqs.select(window)
    # distinct new items per user: drop repeats and items already in the user's history
    n = seqs.num_items
    win_keys = win.user_of_position() * n + win.items
    hist_keys = history.user_of_position() * n + history.items
    keep = np.zeros(win.nnz, dtype=bool)
    keep[np.unique(win_keys, return_index=True)[1]] = True
    keep &= ~np.isin(win_keys, hist_keys)
    targets = win.select(keep)
    users = np.flatnonzero((history.lengths() >= spec.min_history) & (targets.lengths() > 0))
    if len(users) == 0:
        raise DataError(f"split: no user has both history before and events after {_iso(lo)}")
    return _task(name, part, history, users.astype(np.int64), history, targets, None, seqs,
                 {"kind": "time", "start": _iso(lo), "end": _iso(hi) if part == "valid" else None,
                  "test_start": _iso(test_start), "valid_start": _iso(valid_start)})


def _cold(seqs: Interactions, spec: SplitSpec, part: str, name: str) -> EvalTask:
    n = seqs.num_items
    first_seen = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first_seen, seqs.items, seqs.times)
    present = np.flatnonzero(first_seen < np.iinfo(np.int64).max)
    n_cold = max(2, int(round(spec.cold_fraction * len(present))))
    # newest items first; ties by item id so the choice is deterministic
    order = present[np.lexsort((present, -first_seen[present]))]
    cold = order[:n_cold]
    rng = np.random.default_rng(spec.seed)
    cold = cold[rng.permutation(len(cold))]
    valid_items, test_items = np.sort(cold[: len(cold) // 2]), np.sort(cold[len(cold) // 2:])
    part_items = test_items if part == "test" else valid_items
    is_cold = np.zeros(n, dtype=bool)
    is_cold[cold] = True
    is_part = np.zeros(n, dtype=bool)
    is_part[part_items] = True
    # training never sees this part's items; for 'test' the validation items are trainable,
    # as the validation target is in leave-one-out
    unseen = is_part | (is_cold if part == "valid" else np.zeros(n, dtype=bool))
    train = seqs.select(~unseen[seqs.items])
    history = train
    targets = seqs.select(is_part[seqs.items])
    users = np.flatnonzero((history.lengths() >= spec.min_history) & (targets.lengths() > 0))
    if len(users) == 0:
        raise DataError("split: no user has both warm history and cold-item targets")
    candidates = is_part.copy() if spec.candidates == "cold" else None
    return _task(name, part, train, users.astype(np.int64), history, targets, candidates, seqs,
                 {"kind": "cold", "cold_items": int(len(part_items)), "candidates": spec.candidates})


def build_split(dataset, spec: SplitSpec, part: str = "test", name: str | None = None) -> EvalTask:
    """Materialise one part (``'valid'`` or ``'test'``) of a split of ``dataset``."""
    if part not in ("valid", "test"):
        raise DataError(f"split: part must be 'valid' or 'test', got '{part}'")
    seqs = dataset.interactions(spec.event_types, dedupe=spec.dedupe)
    if seqs.nnz == 0:
        raise DataError("split: the dataset has no events of the requested types")
    name = name or spec.kind
    return {"loo": _loo, "time": _time, "cold": _cold}[spec.kind](seqs, spec, part, name)


def split_from_manifest(dataset, name: str) -> SplitSpec:
    """The split called ``name`` in the dataset's manifest, or a default spec of that kind."""
    if name in dataset.splits:
        return SplitSpec.from_dict(dataset.splits[name])
    if name in KINDS:
        return SplitSpec(kind=name)
    known = sorted(set(dataset.splits) | set(KINDS))
    raise DataError(f"split: unknown split '{name}' (this dataset has: {', '.join(known)})")
