import math

import numpy as np
import pytest
import torch

from training.data.interactions import Interactions
from training.data.splits import EvalTask
from training.evaluation.metrics import EvalConfig, evaluate, rank_targets, top_k


def _task(history, targets, num_items, candidates=None):
    h = Interactions.from_lists(history, num_items)
    t = Interactions.from_lists(targets, num_items)
    return EvalTask("t", "test", h, np.arange(len(history)), h, t, candidates, h, {})


def test_rank_excludes_history_and_breaks_ties_by_lower_id():
    hist = Interactions.from_lists([[0], [0]], 5)
    tgt = Interactions.from_lists([[3], [2]], 5)
    scores = np.array([[9.0, 1.0, 5.0, 5.0, 0.0],   # 3 ties with 2; 2 has the lower id -> rank 1
                       [9.0, 1.0, 5.0, 5.0, 0.0]])  # 2 wins the tie -> rank 0
    assert rank_targets(scores, hist, tgt).tolist() == [[1], [0]]


def test_excluded_target_is_never_a_hit():
    hist = Interactions.from_lists([[2]], 3)
    tgt = Interactions.from_lists([[2]], 3)
    r = rank_targets(np.array([[0.0, 0.0, 10.0]]), hist, tgt)
    assert r.item() >= 2


def test_single_target_metrics_by_hand():
    # user 0: target ranked 0; user 1: target ranked 2 (after items 1 and 3); user 2: rank 3
    task = _task([[0], [0], [0]], [[4], [2], [1]], 5)
    scores = np.array([[0, 1, 2, 3, 9], [0, 9, 7, 8, 1], [0, 1, 5, 6, 7]], dtype=float)
    m = evaluate(lambda u, h: scores[u], task, EvalConfig(ks=(1, 3), batch_size=2))
    assert m["HR@1"] == pytest.approx(1 / 3)
    assert m["HR@3"] == pytest.approx(2 / 3)
    assert m["NDCG@3"] == pytest.approx((1 + 1 / math.log2(4)) / 3)
    assert m["MRR"] == pytest.approx((1 + 1 / 3 + 1 / 4) / 3)
    assert m["Recall@3"] == m["HR@3"]
    assert m["users"] == 3


def test_multi_target_recall_and_ndcg():
    task = _task([[0]], [[1, 2, 4]], 5)
    scores = np.array([[9.0, 8.0, 1.0, 7.0, 0.5]])  # ranks without item 0: 1->0, 3->1, 2->2, 4->3
    m = evaluate(lambda u, h: scores[u], task, EvalConfig(ks=(2, 3)))
    assert m["HR@2"] == 1.0
    assert m["Recall@2"] == pytest.approx(1 / 3)
    assert m["Recall@3"] == pytest.approx(2 / 3)
    idcg3 = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert m["NDCG@3"] == pytest.approx((1 + 1 / math.log2(4)) / idcg3)


def test_candidates_restrict_ranking_and_coverage():
    cand = np.array([False, False, True, True, True])
    task = _task([[0]], [[4]], 5, candidates=cand)
    scores = np.array([[9.0, 8.0, 1.0, 2.0, 3.0]])  # 0, 1 are not candidates
    m = evaluate(lambda u, h: scores[u], task, EvalConfig(ks=(1,)))
    assert m["HR@1"] == 1.0
    assert m["Coverage@1"] == pytest.approx(1 / 3)


def test_top_k_is_deterministic_under_ties():
    s = torch.tensor([[1.0, 3.0, 3.0, 3.0, 0.0, 3.0]])
    assert top_k(s, 2).tolist() == [[1, 2]]
    assert top_k(s, 2, margin=0).tolist() == [[1, 2]]  # exact path for long ties
    s = torch.tensor([[1.0, -math.inf, 2.0]])
    assert top_k(s, 3).tolist() == [[2, 0, -1]]


def test_bad_scores_are_reported():
    task = _task([[0]], [[1]], 3)
    with pytest.raises(ValueError, match="shape"):
        evaluate(lambda u, h: np.zeros((1, 2)), task)
    with pytest.raises(ValueError, match="NaN"):
        evaluate(lambda u, h: np.full((1, 3), np.nan), task)


def test_torch_scores_and_batching_give_the_same_result():
    rng = np.random.default_rng(0)
    hist = [[int(x)] for x in rng.integers(0, 50, 40)]
    tgt = [[int(x)] for x in (np.array(hist).ravel() + 1) % 50]
    task = _task(hist, tgt, 50)
    scores = rng.random((40, 50))
    a = evaluate(lambda u, h: scores[u], task, EvalConfig(batch_size=7))
    b = evaluate(lambda u, h: torch.from_numpy(scores[u]), task, EvalConfig(batch_size=40))
    assert a == pytest.approx(b)
