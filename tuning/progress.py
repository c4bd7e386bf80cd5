"""A sweep's console: one line per trial event instead of Ray Tune's status tables.

:class:`TrialLines` is a Ray Tune callback (the sweep runs Tune with ``verbose=0``) that logs, on
the ``tuning.progress`` logger the CLI shows, a line when a trial starts (its configuration), one
per reported epoch (its validation metric and the sweep's best so far) and one when it ends (how
many epochs it ran: fewer than the budget means the scheduler stopped it, since a trial's own
patience is the whole budget) or fails. :func:`tune_verbosity` keeps Tune's own tables off the
console unless ``raycart --verbose``::

    [tune] trial 00001 started (2 running, 0/4 ended): dim 16, dropout 0.0123, heads 1, layers 1, lr 0.00564, max_len 10
    [tune] trial 00001 epoch 2/4: valid_NDCG@10 0.0812 (sweep best 0.0812, trial 00001)
    [tune] trial 00002 stopped by the scheduler after 1/4 epochs: best valid_NDCG@10 0.0433 (3/4 ended)
"""

from __future__ import annotations

import logging
import os

from ray import tune

from training.common.ray_env import verbose

log = logging.getLogger(__name__)


def tune_verbosity() -> int:
    """The sweep's ``RunConfig(verbose=)``: 1 (Tune's tables) with ``--verbose``; else 0 with Tune's
    legacy reporter, which then prints nothing (the newer one prints its experiment header and
    paths even at 0; Tune reads the switch when the sweep starts)."""
    if verbose():
        return 1
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    return 0


def _short(trial) -> str:
    return str(trial.trial_id)[-5:]  # the summary table's trial names


def _epochs(result: dict | None) -> int:
    return int((result or {}).get("training_iteration", 0))


def _value(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


class TrialLines(tune.Callback):
    """``metric``: the reported value to show (higher is better); ``epochs``: each trial's budget."""

    def __init__(self, metric: str, epochs: int, trials: int):
        self.metric, self.epochs, self.trials = metric, epochs, trials
        self.best: dict[str, float] = {}  # trial -> its best reported value

    @staticmethod
    def _ended(trials, ending=None) -> int:
        """Trials that have ended, ``ending`` (the one being reported) included."""
        return sum(t is ending or t.status in ("TERMINATED", "ERROR") for t in trials)

    def on_trial_start(self, iteration, trials, trial, **info):
        running = sum(t is trial or t.status == "RUNNING" for t in trials)
        log.info(f"[tune] trial {_short(trial)} started ({running} running, {self._ended(trials)}/{self.trials} "
                 "ended): " + ", ".join(f"{k} {_value(v)}" for k, v in sorted(trial.config.items())))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.metric not in result:
            return
        name, value = _short(trial), float(result[self.metric])
        self.best[name] = max(value, self.best.get(name, value))
        leader = max(self.best, key=lambda k: self.best[k])
        log.info(f"[tune] trial {name} epoch {_epochs(result)}/{self.epochs}: {self.metric} {value:.4f} "
                 f"(sweep best {self.best[leader]:.4f}, trial {leader})")

    def on_trial_complete(self, iteration, trials, trial, **info):
        name = _short(trial)
        run = _epochs(trial.last_result)
        how = "ended" if run >= self.epochs else "stopped by the scheduler"
        best = f"best {self.metric} {self.best[name]:.4f}" if name in self.best else "nothing reported"
        log.info(f"[tune] trial {name} {how} after {run}/{self.epochs} epochs: {best} "
                 f"({self._ended(trials, trial)}/{self.trials} ended)")

    def on_trial_error(self, iteration, trials, trial, **info):
        error = getattr(trial, "error_file", None) or "see the trial's error file"
        log.warning(f"[tune] trial {_short(trial)} failed ({self._ended(trials, trial)}/{self.trials} ended): {error}")
