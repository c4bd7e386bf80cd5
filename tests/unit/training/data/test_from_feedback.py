"""The serving log becomes training data: known users' engagement on catalogue items (no Ray)."""

import pyarrow as pa

from training.data.from_feedback import merge_feedback


def test_known_users_engagement_is_appended_the_rest_counted(tiny_dataset):
    ds = tiny_dataset
    user, other = ds.users["external_id"].to_pylist()[:2]
    a, b = ds.items["external_id"].to_pylist()[:2]
    imp = pa.table({"request_id": ["r1", "r1", "r2", "r3"], "user_id": [user, user, None, "stranger"],
                    "item_id": [a, b, a, a]})
    t = pa.array([2_000_000_000_000_000 + i for i in range(7)], pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    events = pa.table({"request_id": ["r1", "r1", "r1", "r1", "r2", "r3", "r1"],
                       "item_id": [a, b, b, "runtime-item", a, a, a],
                       "event": ["click", "view", "purchase", "click", "click", "click", "click"],
                       "timestamp": t})
    merged, report = merge_feedback(ds, imp, events)
    assert report == {"events": 7, "kept": 2, "views": 1, "anonymous": 1, "unknown_user": 1, "runtime_item": 1,
                      "duplicate": 1}
    assert merged.events.num_rows == ds.events.num_rows + 2
    new = merged.events.slice(ds.events.num_rows).to_pylist()
    uid = ds.users["external_id"].to_pylist().index(user)
    assert [(e["user_id"], e["event_type"]) for e in new] == [(uid, "click"), (uid, "purchase")]
    assert new[0]["seq"] > max(ds.events["seq"].to_pylist())
    assert merged.items is ds.items and merged.num_users == ds.num_users
    assert other  # the other users are untouched
