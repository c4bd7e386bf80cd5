"""Fine-tuning on what is new (:func:`training.jobs.ranker_data._recent_lists`): which training
lists a retrain keeps and how much each weighs, without Ray."""

import numpy as np
import pytest

from training.common.errors import DataError
from training.data.interactions import Interactions
from training.data.splits import EvalTask
from training.jobs.ranker_data import RankerJob, _recent_lists, check_recency

CUT = 1_000


def _task(target_times: list[int]) -> EvalTask:
    n = len(target_times)
    one = Interactions(np.arange(n + 1, dtype=np.int64), np.zeros(n, np.int64), np.array(target_times, np.int64), 5)
    return EvalTask(name="loo", part="valid", train=one, users=np.arange(n), history=one, targets=one,
                    candidates=None, full=one, info={})


def test_defaults_keep_every_list_with_its_target_at_weight_one():
    has_pos = np.array([True, False, True, True])
    keep, weight = _recent_lists(RankerJob(data="d", retriever="r", out="o"), _task([1, 2, 3, 2000]), has_pos,
                                 np.random.default_rng(0))
    assert keep.tolist() == has_pos.tolist() and weight is None


def test_new_targets_are_all_kept_and_weighted_older_ones_replayed_at_the_fraction():
    rng = np.random.default_rng(0)
    times = np.r_[np.full(4000, 10), np.full(1000, CUT + 5)]  # 4,000 older targets, 1,000 from the log
    has_pos = np.ones(len(times), bool)
    has_pos[-10:] = False  # a new list missing its target is still left out
    job = RankerJob(data="d", retriever="r", out="o", recent_since_us=CUT, recent_weight=4.0, replay=0.25)
    keep, weight = _recent_lists(job, _task(times.tolist()), has_pos, rng)
    assert keep[4000:].sum() == 990 and not keep[-10:].any()
    assert 0.2 < keep[:4000].mean() < 0.3  # the replayed share of the older lists
    assert len(weight) == keep.sum()
    assert (weight[-990:] == 4.0).all() and (weight[:-990] == 1.0).all()


def test_a_target_exactly_at_the_cut_is_new():
    job = RankerJob(data="d", retriever="r", out="o", recent_since_us=CUT, recent_weight=2.0, replay=1.0)
    keep, weight = _recent_lists(job, _task([CUT - 1, CUT]), np.array([True, True]), np.random.default_rng(0))
    assert keep.all() and weight.tolist() == [1.0, 2.0]


@pytest.mark.parametrize("field,value", [("recent_weight", 0.0), ("recent_weight", -1.0), ("replay", 0.0),
                                         ("replay", 1.5), ("warmup_steps", -1)])
def test_out_of_range_levers_are_refused_by_name(field, value):
    kw = {"recent_weight": 1.0, "replay": 1.0, "warmup_steps": 0, field: value}
    with pytest.raises(DataError, match=field):
        check_recency(**kw)


def test_early_stopping_weighs_held_out_users_as_training_does():
    from training.jobs.ranker_data import _recent_weights

    task = _task([CUT - 5, CUT + 5, CUT])
    assert _recent_weights(RankerJob(data="d", retriever="r", out="o"), task) is None
    job = RankerJob(data="d", retriever="r", out="o", recent_since_us=CUT, recent_weight=3.0)
    assert _recent_weights(job, task).tolist() == [1.0, 3.0, 3.0]
