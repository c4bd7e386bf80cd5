"""Progress lines from Ray Train workers to the console of the process that started the run.

Raycart starts Ray with ``log_to_driver`` off (:func:`training.common.ray_env.init_ray`; ``--verbose``
turns it on), so the workers' and Ray's own output stays in Ray's log files and the console shows
only Raycart's lines. A worker's line (an epoch's loss, validation metric and ETA) reaches the
driver through a small actor, :class:`ProgressSink`, that :func:`printing` starts on the driver's
node for the run and drains into the driver's log. Where no sink runs (a Tune trial), a line is
logged where it is made.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import cast

log = logging.getLogger(__name__)


class ProgressSink:
    """The lines of one run, in order (a Ray actor, see :func:`printing`)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def put(self, line: str) -> None:
        self.lines.append(line)

    def since(self, n: int) -> list[str]:
        return self.lines[n:]


def _sink_name(run: str) -> str:
    return f"raycart-progress:{run}"


@contextlib.contextmanager
def printing(run: str, poll_s: float = 0.5):
    """While the block runs, log the lines the run's workers :func:`say` (the sink is pinned to
    this node, so it lives as long as the driver; a lost worker node loses no line)."""
    import ray
    from ray.actor import ActorHandle
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # .remote() is typed ActorHandle | type[ProgressSink] (Ray's ActorProxy, for classes whose methods
    # carry @ray.method); what it returns is the handle
    sink = cast(ActorHandle[ProgressSink], ray.remote(num_cpus=0)(ProgressSink).options(
        name=_sink_name(run), get_if_exists=True, lifetime=None,
        scheduling_strategy=NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False),
    ).remote())
    shown, stop = 0, threading.Event()

    def drain() -> None:
        nonlocal shown
        try:
            lines: list[str] = ray.get(sink.since.remote(shown), timeout=10)
        except Exception:  # noqa: BLE001 -- a slow or restarting cluster: the next poll catches up
            return
        for line in lines:
            log.info(line)
        shown += len(lines)

    def loop() -> None:
        while not stop.wait(poll_s):
            drain()

    thread = threading.Thread(target=loop, name="raycart-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        drain()
        ray.kill(sink)


def say(line: str) -> None:
    """From a Ray Train worker: one progress line for the driver's console."""
    import ray
    import ray.train

    try:
        sink = ray.get_actor(_sink_name(ray.train.get_context().get_experiment_name()))
    except (ValueError, RuntimeError):
        log.info(line)
        return
    sink.put.remote(line)
