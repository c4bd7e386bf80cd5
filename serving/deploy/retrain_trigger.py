"""Retraining on a schedule from the running app (off by default): the :class:`RetrainTrigger`
deployment.

With ``AppArgs.retrain_every_events`` (feedback events published to the log since the last
retrain) and/or ``retrain_every_minutes`` (and at least one new event), the trigger (one replica, no
request traffic) checks the feedback log every ``retrain_poll_s`` -- it counts rows from the
Parquet footers, reading no data -- and, when due, hands a :class:`serving.jobs.retrain.RetrainJob`
(as its fields) to the **retrainer**: a detached Ray actor (:mod:`serving.jobs.retrainer`), so the
job survives the redeploy it may end with. The job is the same as ``raycart retrain`` (merge, warm
retrain with Ray Train, gate, promote through :func:`serving.deploy.run.run_app` -- rolling, no
request dropped) against the app's own arguments: its serving model, the *base* dataset
(``base_data_dir``: a promoted app serves the merged data, and the log is merged into the base
again, never twice) and its log. One job at a time; a job that fails is logged and the schedule
goes on.

The trigger reaches the retrainer through the import path ``AppArgs.retrainer`` (a function that
returns the actor's handle), resolved with importlib when the replica starts: the declarative hook by
which the Serve graph starts a job without importing ``serving.jobs`` (the jobs layer sits above
this one: its promotion redeploys the graph).

:class:`RetrainSchedule` is the Ray-free rule, unit-tested on its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import ray
from ray import serve

from serving.core.schemas import AppArgs
from serving.deploy.netbind import bind_replica_grpc_to_node_address
from training.common.importpath import resolve

log = logging.getLogger(__name__)


@dataclass
class RetrainSchedule:
    """Due when ``every_events`` events arrived since the last start, or ``every_minutes`` passed
    and at least one event arrived (a quiet log never retrains); ``None`` turns a rule off."""

    every_events: int | None
    every_minutes: float | None
    events_at_start: int = 0
    started_at: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.every_events is not None or self.every_minutes is not None

    def due(self, events: int, now: float) -> bool:
        new = events - self.events_at_start
        if new <= 0:
            return False
        if self.every_events is not None and new >= self.every_events:
            return True
        return self.every_minutes is not None and now - self.started_at >= 60 * self.every_minutes

    def start(self, events: int, now: float) -> None:
        self.events_at_start, self.started_at = events, now


@serve.deployment(num_replicas=1)
class RetrainTrigger:
    """Starts a retrain in the retrainer actor when :class:`RetrainSchedule` says it is due;
    :meth:`status` reports the schedule and the retrainer's running and last job."""

    def __init__(self, args: AppArgs):
        bind_replica_grpc_to_node_address()
        self.args = args
        # the hook: the function AppArgs.retrainer names returns the detached actor's handle (and
        # starts the actor if none runs); resolved here, so a wrong import path stops the
        # deployment with its error instead of failing every tick
        self.retrainer: Callable[[], ray.actor.ActorHandle] = resolve(args.retrainer)
        self.schedule = RetrainSchedule(args.retrain_every_events, args.retrain_every_minutes)
        # a new replica (after a promotion, say) starts counting from the log as it is at its first
        # successful count (a log it cannot read yet must not count as all new later)
        self.counted = False
        events = self._events()
        if events is not None:
            self.schedule.start(events, time.time())
            self.counted = True
        self.job = {"feedback": args.feedback_root, "data": args.base_data,
                    "model": args.model_dir, "work": args.retrain_work, "epochs": args.retrain_epochs,
                    "workers": args.retrain_workers, "epsilon": args.policy_epsilon,
                    "ndcg_tolerance": args.retrain_ndcg_tolerance,
                    "app_args": self._write_app_args()}
        self.stop = threading.Event()
        threading.Thread(target=self._loop, name="retrain-schedule", daemon=True).start()

    def _events(self) -> int | None:
        try:
            from training.data.feedback import count_rows

            return count_rows(self.args.feedback_root, "events")
        except Exception as exc:  # noqa: BLE001 -- the store may be down; try again next poll
            log.warning("retrain schedule: cannot count the feedback log (%s)", str(exc)[:200])
            return None

    def _write_app_args(self) -> str:
        """The app's arguments, for the job's promotion."""
        from training.common import storage
        path = storage.join(self.args.retrain_work, "app-args.json")
        storage.atomic_write(path, self.args.model_dump_json(indent=2).encode())
        return path

    def _loop(self) -> None:
        while not self.stop.wait(self.args.retrain_poll_s):
            try:
                self.tick()
            except Exception as exc:  # noqa: BLE001 -- the schedule goes on
                log.warning("retrain schedule tick failed: %s", str(exc)[:300])

    def tick(self) -> bool:
        """Start a retrain when due and none is running; whether one was started."""
        events, now = self._events(), time.time()
        if events is None:
            return False
        if not self.counted:
            self.schedule.start(events, now)
            self.counted = True
            return False
        if not self.schedule.due(events, now):
            return False
        actor = self.retrainer()
        if ray.get(actor.busy.remote()):
            return False
        self.schedule.start(events, now)
        log.info("retrain due (%d events in the log); starting it", events)
        actor.run.remote(self.job)  # runs on in the detached actor; status() reports it
        return True

    def status(self) -> dict:
        return {"schedule": {"every_events": self.schedule.every_events,
                             "every_minutes": self.schedule.every_minutes,
                             "events_at_last_start": self.schedule.events_at_start},
                **cast(dict, ray.get(self.retrainer().status.remote()))}

    def __del__(self):
        self.stop.set()
