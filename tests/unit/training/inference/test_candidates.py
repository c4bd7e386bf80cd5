"""Recent popularity on both kinds of timestamps: a window of days over real times, off (0) over
sequence positions (the Amazon files), where the same window would count early positions."""

import numpy as np
import pytest
import torch

from training.baselines.itemknn import ItemKNN, ItemKNNConfig
from training.data.interactions import Interactions
from training.data.sources import get_source
from training.inference.candidates import CandidateGenerator
from training.models.ranker import DENSE_FEATURES
from training.models.retriever import (
    ItemFeatures,
    RetrieverConfig,
    RetrieverScorer,
    TwoTower,
)

DAY = 86_400 * 1_000_000
RECENT = DENSE_FEATURES.index("log_recent_popularity")


def _stage(train: Interactions, timestamps: str) -> CandidateGenerator:
    torch.manual_seed(0)
    n = train.num_items
    feats = ItemFeatures(n, np.ones(n, bool), np.arange(n + 1), np.zeros(n, np.int64), 1)
    retriever = RetrieverScorer(TwoTower(RetrieverConfig.tiny(), feats))
    return CandidateGenerator.fit(retriever, ItemKNN(ItemKNNConfig.tiny()).fit(train), train, np.ones(n), timestamps)


def _positions(rows: list[list[int]], num_items: int) -> Interactions:
    """Like the Amazon source: each user's events at positions 0, 1, 2, ... (as seconds)."""
    seqs = Interactions.from_lists(rows, num_items)
    pos = np.concatenate([np.arange(len(r)) for r in rows]) * 1_000_000
    return Interactions(seqs.indptr, seqs.items, pos.astype(np.int64), num_items)


# three users; item 1 opens every sequence, item 2 closes the long ones
ROWS = [[1, 0, 3, 4, 2], [1, 3, 4, 0, 2], [1, 4]]


def test_real_times_count_the_window_before_the_users_last_event():
    # item 1: on days 0, 1 and 40; item 2: on day 39
    train = Interactions(np.array([0, 3, 4]), np.array([1, 1, 1, 2]), np.array([0, DAY, 40 * DAY, 39 * DAY]), 5)
    stage = _stage(train, "time")
    assert stage.recent_days == CandidateGenerator.RECENT_DAYS
    assert stage.recent_counts(np.array([[1, 2, 3], [1, 2, 3]]), np.array([41 * DAY, 2 * DAY])).tolist() == \
        [[1, 1, 0], [2, 0, 0]]
    # row 0: one event on day 1 ("now"); row 1: empty ("now" = the last training event, day 40)
    hist = Interactions(np.array([0, 1, 1]), np.array([4]), np.array([DAY]), 5)
    dense = stage.features(hist, np.array([[1, 2], [1, 2]]), np.zeros((2, 2)), np.zeros((2, 2)))
    np.testing.assert_allclose(dense[..., RECENT], np.log1p([[2, 0], [1, 1]]), rtol=1e-6)


def test_the_window_over_positions_would_count_early_positions_not_recency():
    """Why the feature is off on positions: read as times, a user two events long is 'now' at
    second 1, and the 30-day window holds every user's first two events."""
    train = _positions(ROWS, 5)
    as_times = _stage(train, "time")
    counts = as_times.recent_counts(np.array([[1, 2], [1, 2]]), np.array([1, 4]) * 1_000_000)
    # item 1 opens every sequence: "recent" for everyone; item 2 only for long histories
    assert counts.tolist() == [[3, 0], [3, 2]]


def test_positions_turn_the_feature_off():
    train = _positions(ROWS, 5)
    stage = _stage(train, "position")
    assert stage.recent_days is None
    items = np.array([[1, 2, 3], [4, 0, -1]])
    assert stage.recent_counts(items.clip(0), np.array([1, 4]) * 1_000_000).tolist() == [[0, 0, 0], [0, 0, 0]]
    hist = train.take_users(np.array([0, 2]))
    dense = stage.features(hist, items, np.ones((2, 3)), np.zeros((2, 3)))
    assert (dense[..., RECENT] == 0).all()
    # the other features are those of the same stage with the window on
    on = _stage(train, "time").features(hist, items, np.ones((2, 3)), np.zeros((2, 3)))
    assert on[..., RECENT].any()
    others = [i for i in range(len(DENSE_FEATURES)) if i != RECENT]
    np.testing.assert_array_equal(dense[..., others], on[..., others])


def test_the_setting_survives_the_stage_arrays():
    train = _positions(ROWS, 5)
    off, on = _stage(train, "position"), _stage(train, "time")
    assert CandidateGenerator.recent_days_of(off.arrays()) is None
    assert CandidateGenerator.recent_days_of(on.arrays()) == CandidateGenerator.RECENT_DAYS
    old = {k: v for k, v in on.arrays().items() if k != "recent_days"}  # a model saved before the field
    assert CandidateGenerator.recent_days_of(old) == CandidateGenerator.RECENT_DAYS
    x = off.arrays()
    back = CandidateGenerator(off.retriever, off.knn, x["log_pop"], x["log_price"], x["event_keys"],
                          int(x["time_origin"]), CandidateGenerator.recent_days_of(x))
    assert back.recent_days is None
    assert not back.recent_counts(np.array([[1, 2]]), np.array([10**12])).any()


def test_bad_settings_are_refused():
    train = _positions(ROWS, 5)
    with pytest.raises(ValueError, match="timestamps must be 'time' or 'position', got 'order'"):
        _stage(train, "order")
    stage = _stage(train, "time")
    with pytest.raises(ValueError, match="recent_days must be positive or None"):
        CandidateGenerator(stage.retriever, stage.knn, stage.log_pop, stage.log_price, stage.event_keys, 0, 0)


def test_an_amazon_dataset_gets_no_recent_popularity(tmp_path):
    (tmp_path / "Toy.txt").write_text("1 10 11 12 13\n2 11 12 13 14\n3 10 14\n")
    ds = get_source("amazon")(str(tmp_path / "Toy.txt")).dataset
    train = ds.interactions()
    stage = _stage(train, ds.timestamps)
    assert stage.recent_days is None
    dense = stage.features(train, np.array([[0, 1, 2]] * 3), np.zeros((3, 3)), np.zeros((3, 3)))
    assert (dense[..., RECENT] == 0).all()
