"""The paired bootstrap of two models' per-user metrics."""

import numpy as np
import pytest

from training.evaluation.compare import paired_bootstrap


def test_a_consistent_small_loss_is_seen_and_noise_is_not():
    rng = np.random.default_rng(0)
    old = rng.random(2000)
    worse = paired_bootstrap(old, old - 0.004 + rng.normal(0, 0.01, 2000))
    assert worse["ci95"][1] < 0 and worse["ci95"][0] < -0.002  # a 0.004 loss: the interval shows it
    same = paired_bootstrap(old, old + rng.normal(0, 0.01, 2000))
    assert same["ci95"][0] < 0 < same["ci95"][1]
    assert same["users"] == 2000 and same["resamples"] == 1000


def test_unpaired_inputs_are_refused():
    with pytest.raises(ValueError, match="same users"):
        paired_bootstrap(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="no users"):
        paired_bootstrap(np.zeros(0), np.zeros(0))
