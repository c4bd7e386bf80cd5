"""The typed messages between the driver and the Ray Train workers (no Ray): named batch columns
instead of column indices, typed fields instead of dict keys."""

import numpy as np
import pytest
import torch

from training.jobs.loop import driver_dataset
from training.jobs.ranker_data import RankerExamples


def _examples(n: int = 5, c: int = 3, stages: bool = False) -> RankerExamples:
    rng = np.random.default_rng(0)
    return RankerExamples(history=rng.integers(0, 9, (n, 4)), items=rng.integers(-1, 9, (n, c)),
                          dense=rng.random((n, c, 2), dtype=np.float32), label=rng.random((n, c)) < 0.3,
                          hist_stage=rng.integers(0, 3, (n, 4)) if stages else None,
                          cand_stage=rng.integers(0, 3, (n, c)) if stages else None)


def test_a_ranker_batch_gathers_every_array_by_row_and_keeps_the_absent_ones_absent():
    ex = _examples()
    rows = torch.tensor([4, 0, 2])
    b = ex.batch(rows)
    assert len(ex) == 5
    assert b.history.tolist() == ex.history[[4, 0, 2]].tolist()
    assert b.items.tolist() == ex.items[[4, 0, 2]].tolist() and b.label.dtype == torch.bool
    assert b.dense.shape == (3, 3, 2) and torch.equal(b.dense[1], torch.from_numpy(ex.dense[0]))
    assert b.weight is None and b.hist_stage is None and b.cand_stage is None
    staged = _examples(stages=True).batch(rows)
    assert staged.hist_stage is not None and staged.hist_stage.shape == (3, 4)
    assert staged.cand_stage is not None and staged.cand_stage.shape == (3, 3)


def test_the_driver_dataset_refuses_columns_of_different_lengths():
    with pytest.raises(ValueError, match="different lengths"):
        driver_dataset({"inputs": np.zeros((3, 4)), "targets": np.zeros((2, 4))})
