import math

import numpy as np
import pytest

from training.baselines.itemknn import ItemKNN, ItemKNNConfig
from training.baselines.popularity import Popularity
from training.data.interactions import Interactions
from training.data.splits import SplitSpec, build_split
from training.evaluation.metrics import evaluate


def test_itemknn_cosine_with_shrinkage_by_hand():
    # users: {0,1}, {0,1}, {0,2}; |U0|=3, |U1|=2, |U2|=1, |U0&U1|=2, |U0&U2|=1
    train = Interactions.from_lists([[0, 1], [0, 1], [0, 2]], 3)
    knn = ItemKNN(ItemKNNConfig(neighbours=2, shrink=1.0)).fit(train)
    sim = knn.sim.toarray()
    assert sim[0, 1] == pytest.approx(2 / (math.sqrt(3) * math.sqrt(2) + 1), rel=1e-6)
    assert sim[0, 2] == pytest.approx(1 / (math.sqrt(3) * 1 + 1), rel=1e-6)
    assert sim[1, 2] == 0 and np.all(np.diag(sim) == 0)


def test_itemknn_keeps_only_top_neighbours():
    rng = np.random.default_rng(0)
    train = Interactions.from_lists([list(rng.choice(30, 5, replace=False)) for _ in range(100)], 30)
    knn = ItemKNN(ItemKNNConfig(neighbours=4)).fit(train, chunk=7)
    assert (np.diff(knn.sim.indptr) <= 4).all()


def test_sparse_fit_keeps_each_rows_top_values_of_the_dense_similarity():
    """The sparse, chunked fit keeps, per item, the ``neighbours`` largest values of the dense
    cosine-with-shrinkage matrix (which items among ties may differ); chunking changes nothing."""
    rng = np.random.default_rng(2)
    train = Interactions.from_lists([list(rng.choice(60, rng.integers(1, 9), replace=False)) for _ in range(300)], 60)
    x = train.to_csr(binary=True).toarray().astype(np.float64)
    norms = np.sqrt(x.sum(0))
    dense = (x.T @ x) / (norms[:, None] * norms[None, :] + 10.0)
    np.fill_diagonal(dense, 0.0)
    knn = ItemKNN(ItemKNNConfig(neighbours=5, shrink=10.0)).fit(train)
    for i in range(60):
        want = np.sort(dense[i][dense[i] > 0])[::-1][:5]
        got = np.sort(knn.sim[i].data)[::-1]
        np.testing.assert_allclose(got, want, rtol=1e-5)
    chunked = ItemKNN(ItemKNNConfig(neighbours=5, shrink=10.0)).fit(train, chunk=7, budget=50)
    np.testing.assert_array_equal(chunked.sim.toarray(), knn.sim.toarray())


def test_recency_decay_prefers_neighbours_of_recent_items():
    train = Interactions.from_lists([[0, 1]] * 3 + [[2, 3]] * 3, 4)
    history = Interactions.from_lists([[0, 2]], 4)  # 2 is the most recent
    flat = ItemKNN(ItemKNNConfig(recency_decay=1.0)).fit(train).score([0], history)[0]
    recent = ItemKNN(ItemKNNConfig(recency_decay=0.5)).fit(train).score([0], history)[0]
    assert flat[1] == flat[3]
    assert recent[3] > recent[1]


def test_state_round_trip_gives_identical_scores(tiny_dataset):
    task = build_split(tiny_dataset, SplitSpec("loo"), "test")
    for model in (Popularity().fit(task.train), ItemKNN(ItemKNNConfig.tiny()).fit(task.train)):
        config, state = model.state()
        clone = type(model).from_state(config, state)
        h = task.history.take_users(np.arange(5))
        np.testing.assert_array_equal(model.score(task.users[:5], h), clone.score(task.users[:5], h))


def test_itemknn_beats_popularity_on_planted_tastes(tiny_dataset):
    task = build_split(tiny_dataset, SplitSpec("loo"), "test")
    pop = evaluate(Popularity().fit(task.train).score, task)
    knn = evaluate(ItemKNN(ItemKNNConfig.tiny()).fit(task.train).score, task)
    assert knn["NDCG@10"] > 1.5 * pop["NDCG@10"]
