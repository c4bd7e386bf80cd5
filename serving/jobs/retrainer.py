"""The **retrainer**: a detached Ray actor that runs :func:`serving.jobs.retrain.retrain` jobs, one at
a time, for the app's retrain schedule (:mod:`serving.deploy.retrain_trigger`).

Detached, so a job survives the redeploy it may end with (its promotion replaces the very replicas
that started it). The schedule does not import this module: it reaches the actor through the
import path in ``AppArgs.retrainer`` (``"serving.jobs.retrainer:retrainer"``), resolved with
importlib -- the declarative hook that keeps the Serve graph (``serving.deploy``) below the jobs
that redeploy it.
"""

from __future__ import annotations

import logging
import threading
import time

import ray

log = logging.getLogger(__name__)
RETRAINER = "raycart-retrainer"  # the detached actor's name (namespace "raycart")


@ray.remote(num_cpus=0, max_concurrency=2)  # type: ignore[call-overload]  # actor options: not in remote()'s stubs
class Retrainer:
    """Runs one :func:`serving.jobs.retrain.retrain` at a time in this detached actor."""

    def __init__(self):
        from training.common import console

        console.setup()  # the job's progress lines in this actor's log, as `raycart retrain` prints them
        self.running: str | None = None
        self.last: dict | None = None
        self.lock = threading.Lock()

    def busy(self) -> bool:
        return self.running is not None

    def status(self) -> dict:
        return {"running": self.running, "last": self.last}

    def run(self, job_fields: dict) -> dict:
        """Run the job whose :class:`serving.jobs.retrain.RetrainJob` fields are ``job_fields``;
        its summary (also kept for :meth:`status`), or why it was skipped."""
        from serving.jobs.retrain import RetrainJob, retrain

        with self.lock:
            if self.running:
                return {"skipped": f"a retrain is running ({self.running})"}
            self.running = time.strftime("%Y-%m-%dT%H:%M:%S")
        try:
            report = retrain(RetrainJob(**job_fields))
            self.last = {"version": report["version"], "decision": report["decision"],
                         "promoted": report.get("promoted"), "report": report.get("report")}
        except Exception as exc:
            log.exception("scheduled retrain failed")
            self.last = {"error": f"{type(exc).__name__}: {str(exc)[:500]}"}
        finally:
            self.running = None
        return self.last


def retrainer() -> ray.actor.ActorHandle:
    """The retrainer actor, started on first use (``AppArgs.retrainer`` names this function)."""
    # .options is added by @ray.remote; the stubs do not show it on the class
    return Retrainer.options(name=RETRAINER, namespace="raycart", lifetime="detached",  # type: ignore[attr-defined]
                             get_if_exists=True).remote()
