"""Shown slates become weighted ranker lists: engaged vs shown-and-skipped, position-debiased (no Ray)."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from training.common.errors import DataError
from training.data.exposure import ExposureLists, decreasing_fit, examination, exposure_lists
from training.data.from_feedback import merge_feedback
from training.models.ranker import listwise_loss

T0 = 2_000_000_000_000_000  # microseconds: after every synthetic event


def _ts(values):
    return pa.array(values, pa.int64()).cast(pa.timestamp("us", tz="UTC"))


def test_examination_is_recovered_from_the_exploration_draws():
    """Explored items land in a slot at random, so their engagement rate per slot is proportional to
    the examination probability; exploit items (better, and placed by rank) must not distort it."""
    rng = np.random.default_rng(0)
    truth = 1 / (1 + np.arange(10)) ** 0.7
    n = 40_000
    pos = rng.integers(0, 10, n)
    greedy = rng.random(n) < 0.8
    relevance = np.where(greedy, 0.6 - 0.05 * pos, 0.3)  # the greedy items are better at the top
    engaged = rng.random(n) < truth[pos] * relevance
    theta, info = examination(pos, greedy, engaged, 10)
    assert np.all(np.diff(theta) <= 0) and theta[0] == 1.0
    assert np.max(np.abs(theta - truth)) < 0.08, (theta, truth)
    # the naive estimate from every impression is confounded by the greedy items' order
    naive = np.bincount(pos[engaged], minlength=10) / np.bincount(pos, minlength=10)
    assert np.max(np.abs(naive / naive[0] - truth)) > 0.1
    # too few exploration engagements: no reweighting, and it says so
    theta, info = examination(pos[:50], greedy[:50], engaged[:50], 10)
    assert np.all(theta == 1.0) and "no position reweighting" in info["note"]


def test_decreasing_fit_pools_violators():
    fit = decreasing_fit(np.array([1.0, 0.6, 0.2, 0.5, 0.4, 0.1]), np.ones(6))
    assert np.all(np.diff(fit) <= 1e-12)
    assert fit.tolist() == pytest.approx([1.0, 0.6, 0.3667, 0.3667, 0.3667, 0.1], abs=1e-4)
    assert decreasing_fit(np.array([0.2, 0.5]), np.array([3.0, 1.0])).tolist() == pytest.approx([0.275, 0.275])


def _log(ds):
    """r1: user 0 clicks and buys slot 2 (views slot 3); r5, r6: user 0's two later clicks (their
    validation and test events once merged); r2 anonymous; r3 nothing engaged; r4 a runtime item."""
    users = ds.users["external_id"].to_pylist()
    items = ds.items["external_id"].to_pylist()
    imp = {"request_id": [], "user_id": [], "item_id": [], "position": [], "greedy": [], "timestamp": []}

    def show(rid, user, slate, t, greedy=True):
        for k, item in enumerate(slate):
            for key, v in zip(imp, (rid, user, item, k, greedy, t)):
                imp[key].append(v)

    show("r1", users[0], items[10:14], T0)
    show("r2", None, items[10:14], T0)
    show("r3", users[1], items[14:18], T0)
    show("r4", users[2], [items[18], "runtime-item", items[19]], T0)
    show("r5", users[0], items[20:23], T0 + 100)
    show("r6", users[0], items[23:26], T0 + 200)
    ev = [("r1", items[12], "click", T0 + 10), ("r1", items[12], "purchase", T0 + 20), ("r1", items[13], "view", T0 + 5),
          ("r2", items[10], "click", T0 + 10), ("r4", "runtime-item", "click", T0 + 10),
          ("r5", items[21], "click", T0 + 110), ("r6", items[23], "click", T0 + 210)]
    events = pa.table({"request_id": [e[0] for e in ev], "item_id": [e[1] for e in ev], "event": [e[2] for e in ev],
                       "timestamp": _ts([e[3] for e in ev])})
    table = pa.table({**{k: v for k, v in imp.items() if k != "timestamp"}, "timestamp": _ts(imp["timestamp"])})
    merged, _ = merge_feedback(ds, table, events)
    return merged, table, events


def test_engaged_slates_of_known_users_become_lists(tiny_dataset):
    ds, imp, events = _log(tiny_dataset)
    lists = exposure_lists(ds, imp, events)
    r = lists.report
    assert r["requests_with_engagement"] == 5 and r["anonymous_or_unknown_user"] == 1
    # r5, r6: user 0's validation and test events; r4: after user 2's (whose click was on a runtime item)
    assert r["after_validation"] == 3 and r["lists"] == 1
    assert lists.items.tolist() == [list(range(10, 14))] and lists.label.tolist() == [[False, False, True, False]]
    assert lists.users.tolist() == [0] and lists.time_us.tolist() == [T0]
    assert lists.weight.tolist() == [1.0]  # no exploration in this log: no reweighting
    # its history ends before the slate was shown: none of the later clicks is in it
    inter = ds.interactions(dedupe=True)
    hist = lists.histories(inter)
    assert hist.num_users == 1 and np.all(hist.times < T0)
    assert hist.lengths()[0] == inter.lengths()[0] - 3


def test_position_weights_come_from_the_exploration(tiny_dataset):
    """A log whose exploration shows clicks fall off down the slate weighs a click at slot 3 more."""
    ds, imp, events = _log(tiny_dataset)
    n = 400  # exploration impressions of another user: clicks at slot 0 twice as often as at slot 3
    items = ds.items["external_id"].to_pylist()
    user = ds.users["external_id"].to_pylist()[3]
    rng = np.random.default_rng(0)
    extra_imp, extra_ev = [], []
    for i in range(n):
        rid, pos = f"x{i}", i % 4
        extra_imp.append((rid, user, items[30 + pos], pos, False, T0 + 1000))
        if rng.random() < 0.4 / (1 + pos / 3):
            extra_ev.append((rid, items[30 + pos], "click", T0 + 1001))
    cols = list(zip(*extra_imp))
    more = pa.table({"request_id": cols[0], "user_id": cols[1], "item_id": cols[2], "position": cols[3],
                     "greedy": cols[4], "timestamp": _ts(cols[5])}).cast(imp.schema)
    ev_cols = list(zip(*extra_ev))
    more_ev = pa.table({"request_id": ev_cols[0], "item_id": ev_cols[1], "event": ev_cols[2],
                        "timestamp": _ts(ev_cols[3])}).cast(events.schema)
    lists = exposure_lists(ds, pa.concat_tables([imp, more]), pa.concat_tables([events, more_ev]))
    theta = np.array(lists.report["examination"]["theta"])
    assert theta[0] == 1.0 and 0.35 < theta[3] < 0.75, theta  # truth 0.5
    assert lists.weight[0] == pytest.approx(1 / theta[2], rel=1e-3)  # r1's click was at slot 2


def test_round_trip_and_bad_files(tiny_dataset, tmp_path):
    ds, imp, events = _log(tiny_dataset)
    lists = exposure_lists(ds, imp, events)
    lists.save(str(tmp_path / "x.parquet"))
    back = ExposureLists.load(str(tmp_path / "x.parquet"))
    assert back.items.tolist() == lists.items.tolist() and back.weight.tolist() == lists.weight.tolist()
    assert back.users.tolist() == lists.users.tolist() and back.label.tolist() == lists.label.tolist()
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="not an exposure-list table"):
        ExposureLists.load(str(tmp_path / "bad.parquet"))


def test_weighted_listwise_loss():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 3.0]])
    cands = torch.tensor([[0, 1, 2], [3, 4, -1]])
    labels = torch.tensor([[True, False, False], [False, True, False]])
    each = torch.stack([listwise_loss(logits[i:i + 1], cands[i:i + 1], labels[i:i + 1]) for i in range(2)])
    assert torch.allclose(listwise_loss(logits, cands, labels), each.mean())
    assert torch.allclose(listwise_loss(logits, cands, labels, torch.tensor([1.0, 1.0])), each.mean())
    assert torch.allclose(listwise_loss(logits, cands, labels, torch.tensor([0.0, 2.0])), each[1])
    assert torch.allclose(listwise_loss(logits, cands, labels, torch.tensor([1.0, 3.0])), (each[0] + 3 * each[1]) / 4)
