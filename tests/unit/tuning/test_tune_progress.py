"""The sweep's console lines (:class:`tuning.progress.TrialLines`), fed the way Ray Tune calls a
callback: one line per trial start, reported epoch and end, no tables."""

import logging
from types import SimpleNamespace

from tuning.progress import TrialLines

METRIC = "valid_NDCG@10"


def _trial(n: int, status: str = "PENDING", **config) -> SimpleNamespace:
    return SimpleNamespace(trial_id=f"5e1d5_0000{n}", status=status, config=config or {"lr": 0.003, "dim": 16},
                           last_result={})


def _report(lines: TrialLines, trials: list, trial, result: dict) -> None:
    lines.on_trial_result(0, trials, trial, result)
    trial.last_result = result  # as Tune keeps it, after the result's callbacks


def test_one_line_per_trial_event(caplog):
    lines = TrialLines(METRIC, epochs=4, trials=3)
    a, b, c = _trial(0), _trial(1, lr=0.005636955, dim=8), _trial(2)
    with caplog.at_level(logging.INFO, logger="tuning.progress"):
        lines.on_trial_start(0, [a, b, c], a)
        a.status = "RUNNING"
        lines.on_trial_start(0, [a, b, c], b)
        b.status = "RUNNING"
        for epoch, value in [(1, 0.06), (2, 0.07), (3, 0.08), (4, 0.075)]:
            _report(lines, [a, b, c], a, {METRIC: value, "training_iteration": epoch})
        lines.on_trial_complete(0, [a, b, c], a)
        a.status = "TERMINATED"
        _report(lines, [a, b, c], b, {"training_iteration": 1})  # no metric: no line
        _report(lines, [a, b, c], b, {METRIC: 0.09, "training_iteration": 1})
        lines.on_trial_complete(0, [a, b, c], b)  # stopped by ASHA after its first epoch
        b.status = "TERMINATED"
        c.error_file = "/runs/c/error.txt"
        lines.on_trial_error(0, [a, b, c], c)
    got = [r.getMessage() for r in caplog.records]
    assert got == [
        "[tune] trial 00000 started (1 running, 0/3 ended): dim 16, lr 0.003",
        "[tune] trial 00001 started (2 running, 0/3 ended): dim 8, lr 0.00564",
        "[tune] trial 00000 epoch 1/4: valid_NDCG@10 0.0600 (sweep best 0.0600, trial 00000)",
        "[tune] trial 00000 epoch 2/4: valid_NDCG@10 0.0700 (sweep best 0.0700, trial 00000)",
        "[tune] trial 00000 epoch 3/4: valid_NDCG@10 0.0800 (sweep best 0.0800, trial 00000)",
        "[tune] trial 00000 epoch 4/4: valid_NDCG@10 0.0750 (sweep best 0.0800, trial 00000)",
        "[tune] trial 00000 ended after 4/4 epochs: best valid_NDCG@10 0.0800 (1/3 ended)",
        "[tune] trial 00001 epoch 1/4: valid_NDCG@10 0.0900 (sweep best 0.0900, trial 00001)",
        "[tune] trial 00001 stopped by the scheduler after 1/4 epochs: best valid_NDCG@10 0.0900 (2/3 ended)",
        "[tune] trial 00002 failed (3/3 ended): /runs/c/error.txt",
    ]
