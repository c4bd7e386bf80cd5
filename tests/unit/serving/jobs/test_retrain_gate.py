"""The retrain gate's rules (:func:`serving.jobs.retrain.gate`), without training anything."""

import numpy as np
import pytest

from serving.jobs.retrain import gate
from training.evaluation.compare import paired_bootstrap

OPE_NOT_WORSE = {"difference": 0.01, "difference_ci95": [-0.01, 0.03], "old_effective_sample_size": 50,
                 "new_effective_sample_size": 50}
OPE_THIN = {"difference": -0.2, "old_effective_sample_size": 2, "new_effective_sample_size": 3}


def _users(shift: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    old = rng.random(3000)
    return old, np.clip(old + shift + rng.normal(0, 0.02, 3000), 0, 1)


@pytest.mark.parametrize("seed", range(5))
def test_a_slightly_worse_candidate_is_refused_that_the_old_fixed_margin_let_through(seed):
    old, new = _users(-0.005, seed)  # 0.005 worse on average: inside the old 0.01 margin
    d = gate({"NDCG@10": old.mean()}, {"NDCG@10": new.mean()}, paired_bootstrap(old, new), OPE_THIN, 0.002, 10)
    assert not d["promote"] and not d["holdout_ok"] and d["ope"] == "inconclusive"
    assert "refused" in d["reasons"][0]


@pytest.mark.parametrize("seed", range(5))
def test_a_better_or_equal_candidate_is_promoted(seed):
    for shift in (0.01, 0.0):
        old, new = _users(shift, seed)
        d = gate({"NDCG@10": old.mean()}, {"NDCG@10": new.mean()}, paired_bootstrap(old, new), OPE_NOT_WORSE,
                 0.002, 10)
        assert d["promote"], (shift, d["reasons"])


def test_ope_evidence_of_a_loss_refuses_even_a_holdout_pass():
    old, new = _users(0.01)
    ope = {**OPE_NOT_WORSE, "difference": -0.05, "difference_ci95": [-0.08, -0.02]}
    d = gate({"NDCG@10": old.mean()}, {"NDCG@10": new.mean()}, paired_bootstrap(old, new), ope, 0.002, 10)
    assert d["holdout_ok"] and d["ope"] == "worse" and not d["promote"]


def test_a_negative_tolerance_is_refused():
    old, new = _users(0.0)
    with pytest.raises(ValueError, match="ndcg_tolerance"):
        gate({"NDCG@10": 0.1}, {"NDCG@10": 0.1}, paired_bootstrap(old, new), OPE_NOT_WORSE, -0.1, 10)
