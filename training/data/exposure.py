"""Ranker training lists from what the serving app showed: engaged items against shown-and-skipped ones.

Each logged request of a **known user** (``user_id`` of the dataset) that led to a click, cart or
purchase of a catalogue item becomes one list: the slate as it was shown (slot order), labelled
with the items the shopper engaged with; the others were seen and passed over -- explicit
negatives the sampled candidate lists of :mod:`training.jobs.ranker_data` never have.

**Position debiasing.** A shopper examines lower slots less often, so a skip at slot 9 says less
than a skip at slot 0, and a click at slot 9 means more. Under the position-based examination
model (an item is clicked iff it is examined, with probability ``theta[slot]``, and relevant),
weighting each list's loss by ``1 / theta[slot of the engaged item]`` makes the expected loss that
of full examination (Joachims, Swaminathan & Schnabel 2017, "Unbiased learning-to-rank with
biased feedback"; with several engaged items, the mean of their weights; weights capped at
``max_weight``). ``theta`` is **estimated from the log's own exploration**: items the policy drew
at random (``greedy`` false) land in a slot independently of how good they are, so their
engagement rate per slot is proportional to ``theta`` (the randomisation approach of Wang,
Bendersky, Metzler & Najork 2016, "Learning to rank with selection bias in personal search").
Rates are smoothed towards the overall rate, fitted non-increasing down the slate (isotonic
regression, weighted by impressions) and floored at ``min_theta``; with fewer than ``min_clicks`` exploration engagements the log says too little and
every ``theta`` is 1 (no reweighting; the report says so).

**Leakage.** A list with any engagement at or after the user's validation event (the second to
last of the merged data: the ``loo`` split over all event types, which ``raycart retrain`` uses) is
left out: the holdout the retrain gate compares models on, and the early-stopping lists, stay
unseen. (Other split schemes would need their own cut-off; retrain does not offer them.)

Plain numpy/pyarrow, no Ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from training.common import storage
from training.common.errors import DataError
from training.data.dataset import Dataset
from training.data.from_feedback import KEPT as ENGAGED
from training.data.interactions import Interactions


@dataclass(frozen=True)
class ExposureLists:
    users: np.ndarray  # (n,) dataset user rows
    time_us: np.ndarray  # (n,) when the slate was shown: histories end before it
    items: np.ndarray  # (n, k) dataset item rows in slot order; -1 where the slot held an unknown item
    label: np.ndarray  # (n, k) bool: engaged
    weight: np.ndarray  # (n,) the position-debiasing weight of the list's loss
    report: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.users)

    def save(self, path: str) -> None:
        table = pa.table({"user": self.users, "time_us": self.time_us,
                          "items": pa.array(list(self.items), pa.list_(pa.int64())),
                          "label": pa.array(list(self.label), pa.list_(pa.bool_())), "weight": self.weight})
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        storage.atomic_write(path, sink.getvalue().to_pybytes())

    @classmethod
    def load(cls, path: str) -> ExposureLists:
        try:
            t = pq.read_table(pa.BufferReader(storage.read_bytes(path)))
        except (OSError, pa.ArrowInvalid) as e:
            raise DataError(f"{path}: not an exposure-list table ({e})") from e
        for name in ("user", "time_us", "items", "label", "weight"):
            if name not in t.column_names:
                raise DataError(f"{path}: exposure lists need a column {name!r}")
        k = max((len(x) for x in t["items"].to_pylist()), default=0)
        return cls(t["user"].to_numpy(), t["time_us"].to_numpy(), _pad(t["items"].to_pylist(), k, -1, np.int64),
                   _pad(t["label"].to_pylist(), k, False, bool), t["weight"].to_numpy())

    def histories(self, interactions: Interactions) -> Interactions:
        """Each list's history: its user's interactions before the slate was shown."""
        rows = interactions.take_users(self.users)
        return rows.select(rows.times < np.repeat(self.time_us, rows.lengths()))


def _pad(rows: list, k: int, fill, dtype) -> np.ndarray:
    out = np.full((len(rows), k), fill, dtype=dtype)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def examination(positions: np.ndarray, greedy: np.ndarray, engaged: np.ndarray, slots: int, prior: float = 20.0,
                min_clicks: int = 20, min_theta: float = 0.1) -> tuple[np.ndarray, dict]:
    """``theta[slot]`` relative to slot 0 from the exploration impressions (see the module doc), and
    what it came from."""
    explored = ~greedy
    shown = np.bincount(positions[explored], minlength=slots)[:slots].astype(float)
    hits = np.bincount(positions[explored & engaged], minlength=slots)[:slots].astype(float)
    info: dict[str, int | str | list[float]] = {"exploration_impressions": int(shown.sum()),
                                                "exploration_engagements": int(hits.sum())}
    if hits.sum() < min_clicks:
        info["note"] = f"fewer than {min_clicks} engagements with explored items: no position reweighting"
        return np.ones(slots), info
    rate = (hits + prior * hits.sum() / shown.sum()) / (shown + prior)
    fit = decreasing_fit(rate, shown + prior)
    theta = np.clip(fit / fit[0], min_theta, 1.0)
    info["theta"] = [round(float(t), 4) for t in theta]
    return theta, info


def decreasing_fit(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The weighted least-squares non-increasing fit of ``values`` (pool adjacent violators): a
    noisy low slot is averaged with its neighbours instead of capping every slot below it."""
    blocks: list[list[float]] = []  # [mean, weight, length]
    for v, w in zip(values, weights):
        blocks.append([float(v), float(w), 1])
        while len(blocks) > 1 and blocks[-2][0] < blocks[-1][0]:
            m2, w2, n2 = blocks.pop()
            m1, w1, n1 = blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
    return np.concatenate([np.full(int(n), m) for m, _, n in blocks])


def exposure_lists(ds: Dataset, impressions: pa.Table, events: pa.Table, max_weight: float = 10.0,
                   min_clicks: int = 20) -> ExposureLists:
    """The lists of the module doc from the feedback log (``impressions``, ``events``); ``ds`` is the
    dataset the log was merged into (:func:`training.data.from_feedback.merge_feedback`)."""
    users = {u: i for i, u in enumerate(ds.users["external_id"].to_pylist())}
    items = {x: i for i, x in enumerate(ds.items["external_id"].to_pylist())}
    engaged_at: dict[tuple[str, str], int] = {}
    ev_t = events["timestamp"].cast(pa.int64()).to_pylist() if events.num_rows else []
    for rid, item, kind, t in zip(events["request_id"].to_pylist(), events["item_id"].to_pylist(),
                                  events["event"].to_pylist(), ev_t):
        if kind in ENGAGED:
            key = (rid, item)
            engaged_at[key] = min(engaged_at.get(key, t), t)
    rid = np.asarray(impressions["request_id"].to_pylist(), dtype=object)
    pos = impressions["position"].to_numpy().astype(np.int64)
    greedy = np.asarray([g is not False for g in impressions["greedy"].to_pylist()]) \
        if "greedy" in impressions.column_names else np.ones(len(rid), bool)
    shown_items = impressions["item_id"].to_pylist()
    engaged = np.array([(r, i) in engaged_at for r, i in zip(rid, shown_items)], bool)
    slots = int(pos.max()) + 1 if len(pos) else 0
    theta, info = examination(pos, greedy, engaged, slots, min_clicks=min_clicks)
    # each user's validation event (second to last, loo): lists from then on are left out
    inter = ds.interactions(dedupe=True)
    cutoff = np.full(ds.num_users, np.iinfo(np.int64).max)
    ok = inter.lengths() >= 2
    cutoff[ok] = inter.times[inter.indptr[1:][ok] - 2]
    counts = {"requests_with_engagement": 0, "lists": 0, "anonymous_or_unknown_user": 0, "after_validation": 0}
    order = np.lexsort((pos, rid.astype(str)))
    t_shown = impressions["timestamp"].cast(pa.int64()).to_numpy()
    user_col = impressions["user_id"].to_pylist()
    out_u, out_t, out_items, out_label, out_w = [], [], [], [], []
    starts = np.flatnonzero(np.r_[True, rid[order][1:] != rid[order][:-1]])
    for lo, hi in zip(starts, np.r_[starts[1:], len(order)]):
        rows = order[lo:hi]
        if not engaged[rows].any():
            continue
        counts["requests_with_engagement"] += 1
        user = users.get(user_col[rows[0]])
        if user is None:
            counts["anonymous_or_unknown_user"] += 1
            continue
        last = max(engaged_at[(rid[r], shown_items[r])] for r in rows[engaged[rows]])
        if last >= cutoff[user]:  # any of its engagements: a held-out event may be among them
            counts["after_validation"] += 1
            continue
        slate = [items.get(shown_items[r], -1) for r in rows]
        label = engaged[rows] & (np.array(slate) >= 0)
        if not label.any():
            continue
        out_u.append(user)
        out_t.append(int(t_shown[rows].min()))
        out_items.append(slate)
        out_label.append(label)
        out_w.append(min(max_weight, float(np.mean(1.0 / theta[pos[rows][label]]))))
    counts["lists"] = len(out_u)
    k = max((len(s) for s in out_items), default=0)
    w = np.array(out_w, np.float64)
    report: dict[str, object] = {**counts, "examination": info}
    report["mean_weight"] = round(float(w.mean()), 4) if len(w) else None
    return ExposureLists(np.array(out_u, np.int64), np.array(out_t, np.int64), _pad(out_items, k, -1, np.int64),
                         _pad([lbl.tolist() for lbl in out_label], k, False, bool), w, report)
