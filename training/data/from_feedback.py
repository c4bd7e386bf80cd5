"""Training data from the serving feedback log: the base dataset plus what shoppers did since.

Every click, cart and purchase of a **known user** (the request that showed the item named a
``user_id`` of the base dataset) on a **catalogue item** becomes an event of the dataset, dated
when it happened, so the newest engagement is each user's holdout in the ``loo`` split: a retrained
model is judged on what shoppers did after the serving model was trained. ``view`` events are
left out (the dataset's histories hold engagement), as are anonymous sessions (no stored history
to extend) and items added at runtime (no training-time item id); the report counts each.
Shown-and-skipped items become explicit negatives in :mod:`training.data.exposure` (ranker lists
of the shown slates), not here.

Plain pyarrow/numpy, no Ray.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow as pa

from training.data.dataset import Dataset
from training.data.schema import EVENTS

KEPT = ("click", "cart", "purchase")


def merge_feedback(ds: Dataset, impressions: pa.Table, events: pa.Table) -> tuple[Dataset, dict]:
    """``(the dataset with the log's engagement appended, counts of what was kept and skipped)``."""
    req_user = dict(zip(impressions["request_id"].to_pylist(), impressions["user_id"].to_pylist()))
    users = {u: i for i, u in enumerate(ds.users["external_id"].to_pylist())}
    items = {x: i for i, x in enumerate(ds.items["external_id"].to_pylist())}
    report = {"events": events.num_rows, "kept": 0, "views": 0, "anonymous": 0, "unknown_user": 0,
              "runtime_item": 0, "duplicate": 0}
    rows_u, rows_i, rows_t, rows_e, seen = [], [], [], [], set()
    times = events["timestamp"].cast(pa.int64()).to_pylist() if events.num_rows else []
    for rid, item, event, t in zip(events["request_id"].to_pylist(), events["item_id"].to_pylist(),
                                   events["event"].to_pylist(), times):
        if event not in KEPT:
            report["views"] += 1
            continue
        user = req_user.get(rid)
        if user is None:
            report["anonymous"] += 1
            continue
        if user not in users:
            report["unknown_user"] += 1
            continue
        if item not in items:
            report["runtime_item"] += 1
            continue
        key = (rid, item, event)
        if key in seen:
            report["duplicate"] += 1
            continue
        seen.add(key)
        rows_u.append(users[user])
        rows_i.append(items[item])
        rows_t.append(t)
        rows_e.append(event)
    report["kept"] = len(rows_u)
    if not rows_u:
        return ds, report
    start = int(np.max(ds.events["seq"].to_numpy())) + 1 if ds.events.num_rows else 0
    new = pa.table({"user_id": pa.array(rows_u, pa.int64()), "item_id": pa.array(rows_i, pa.int64()),
                    "timestamp": pa.array(rows_t, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
                    "event_type": pa.array(rows_e, pa.string()), "value": pa.nulls(len(rows_u), pa.float64()),
                    "seq": pa.array(np.arange(start, start + len(rows_u)), pa.int64())}, schema=EVENTS)
    base = ds.events.select(EVENTS.names).cast(EVENTS)
    merged = replace(ds, events=pa.concat_tables([base, new]), source=f"{ds.source}+feedback",
                     notes={**(ds.notes or {}), "feedback": f"{len(rows_u)} events from the serving log"})
    return merged, report
