import numpy as np
import pyarrow as pa
import pytest

from training.common.errors import DataError
from training.data.dataset import Dataset
from training.data.interactions import Interactions
from training.data.splits import SplitSpec, build_split


def _dataset(rows):
    """rows: (user, item, day)"""
    users = sorted({u for u, _, _ in rows})
    items = sorted({i for _, i, _ in rows} | {9})
    events = pa.table({
        "user_id": [u for u, _, _ in rows], "item_id": [i for _, i, _ in rows],
        "timestamp": pa.array([np.datetime64("2024-01-01", "us") + np.timedelta64(d, "D") for _, _, d in rows]),
        "event_type": ["purchase"] * len(rows), "seq": list(range(len(rows)))})
    return Dataset(items=pa.table({"item_id": list(range(max(items) + 1)),
                                   "external_id": [str(i) for i in range(max(items) + 1)]}),
                   users=pa.table({"user_id": users, "external_id": [str(u) for u in users]}),
                   events=events.cast(pa.schema([("user_id", pa.int64()), ("item_id", pa.int64()),
                                                 ("timestamp", pa.timestamp("us", tz="UTC")),
                                                 ("event_type", pa.string()), ("seq", pa.int64())])))


def test_interactions_order_by_time_then_seq_and_dedupe():
    seqs = Interactions.from_events(np.array([0, 0, 0, 1]), np.array([5, 3, 5, 2]), np.array([2, 1, 3, 0]),
                                    np.array([0, 1, 2, 3]), 2, 6)
    assert seqs.row(0).tolist() == [3, 5, 5]
    dedup = Interactions.from_events(np.array([0, 0, 0]), np.array([5, 3, 5]), np.array([2, 1, 3]),
                                     np.array([0, 1, 2]), 1, 6, dedupe=True)
    assert dedup.row(0).tolist() == [3, 5]
    assert seqs.drop_last(1).row(0).tolist() == [3, 5]
    assert seqs.last(2).tolist() == [5, -1]


def test_leave_one_out_test_and_valid():
    ds = _dataset([(0, 1, 0), (0, 2, 1), (0, 3, 2), (0, 4, 3), (1, 5, 0), (1, 6, 1)])
    test = build_split(ds, SplitSpec("loo"), "test")
    assert test.users.tolist() == [0, 1]
    assert test.history.row(0).tolist() == [1, 2, 3] and test.targets.row(0).tolist() == [4]
    assert test.train.row(1).tolist() == [5]
    valid = build_split(ds, SplitSpec("loo"), "valid")
    assert valid.users.tolist() == [0]  # user 1 has no item before its validation target
    assert valid.history.row(0).tolist() == [1, 2] and valid.targets.row(0).tolist() == [3]
    assert 4 not in valid.train.items and 3 not in valid.train.items


def test_leave_last_basket_out():
    # user 0: basket on day 0 (items 1, 2), day 1 (3), day 2 (4, 5); user 1: a single basket
    ds = _dataset([(0, 1, 0), (0, 2, 0), (0, 3, 1), (0, 4, 2), (0, 5, 2), (1, 6, 0), (1, 7, 0)])
    test = build_split(ds, SplitSpec("loo", basket=True), "test")
    assert test.users.tolist() == [0]
    assert test.history.row(0).tolist() == [1, 2, 3] and test.targets.row(0).tolist() == [4, 5]
    valid = build_split(ds, SplitSpec("loo", basket=True), "valid")
    assert valid.history.row(0).tolist() == [1, 2] and valid.targets.row(0).tolist() == [3]
    item_level = build_split(ds, SplitSpec("loo"), "test")
    assert item_level.history.row(0).tolist() == [1, 2, 3, 4]  # the basket-mate 4 leaks in


def test_time_split_targets_are_new_distinct_items_after_cutoff():
    ds = _dataset([(0, 1, 0), (0, 2, 5), (0, 1, 11), (0, 3, 12), (0, 3, 13), (1, 4, 1), (1, 5, 6)])
    spec = SplitSpec("time", dedupe=False, valid_start="2024-01-05", test_start="2024-01-11")
    test = build_split(ds, spec, "test")
    assert test.users.tolist() == [0]
    assert test.targets.row(0).tolist() == [3]  # item 1 is a repeat, item 3 counted once
    assert test.history.row(0).tolist() == [1, 2]
    assert test.train.row(1).tolist() == [4, 5]
    valid = build_split(ds, spec, "valid")
    assert sorted(valid.users.tolist()) == [0, 1]
    assert valid.targets.row(1).tolist() == [5]
    with pytest.raises(DataError, match="before"):
        build_split(ds, SplitSpec("time", valid_start="2024-02-01", test_start="2024-01-11"), "test")
    with pytest.raises(DataError, match="not a date"):
        build_split(ds, SplitSpec("time", test_start="next tuesday"), "test")


def test_cold_split_never_trains_on_test_items(tiny_dataset):
    spec = SplitSpec("cold", cold_fraction=0.2)
    test = build_split(tiny_dataset, spec, "test")
    valid = build_split(tiny_dataset, spec, "valid")
    test_items = np.flatnonzero(test.candidates)
    valid_items = np.flatnonzero(valid.candidates)
    assert len(test_items) and len(valid_items) and not set(test_items) & set(valid_items)
    assert not np.isin(test.train.items, test_items).any()
    assert not np.isin(valid.train.items, np.concatenate([test_items, valid_items])).any()
    assert np.isin(test.targets.items, test_items).all()
    assert len(test.users) > 0


def test_unknown_split_kind():
    with pytest.raises(DataError, match="unknown kind"):
        SplitSpec("random")
