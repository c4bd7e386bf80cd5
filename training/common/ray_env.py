"""Start or join Ray for a CLI job.

With ``RAY_ADDRESS`` set (a cluster, or ``ray job submit``), jobs join it. Otherwise a local
Ray instance starts bound to 127.0.0.1 with the dashboard off. Ray reads
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` when it is first imported, so it is set here before the
import; set later, the dashboard process listens on 0.0.0.0 (seen with Ray 2.60).
"""

from __future__ import annotations

import os
import sys

from training.common.errors import RaycartError


def loopback_before_import() -> None:
    """Call before anything imports Ray: a local Ray started later binds to 127.0.0.1 only."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def verbose() -> bool:
    """``raycart --verbose`` (or ``RAYCART_VERBOSE=1``): Ray's own output on the console too."""
    return os.environ.get("RAYCART_VERBOSE", "") not in ("", "0")


def quiet_ray() -> None:
    """Unless :func:`verbose`: no Ray Data progress bars and no Ray INFO lines from this process
    (they stay in Ray's log files, whose folder :func:`init_ray` names)."""
    import logging

    if verbose():
        return
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    for name in ("ray", "ray.train", "ray.tune", "ray.serve"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its warnings: "progress bars disabled" and the like


def init_ray(num_cpus: int | None = None, num_gpus: int | None = None, dashboard: bool = False):
    """``dashboard``: start the dashboard (on 127.0.0.1) -- Ray's State API needs it, and Ray
    Train's placement-group cleaner uses that API to free the workers of a Tune trial that ASHA
    stopped; without it those CPUs stay reserved and the next trials never start.

    The workers' output is not streamed to this console (``log_to_driver``) unless
    :func:`verbose`: Raycart's own progress lines come through :mod:`training.jobs.progress`."""
    imported_before = "ray" in sys.modules and "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ
    loopback_before_import()
    import ray

    if ray.is_initialized():
        return ray
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=verbose())
    else:
        if imported_before:
            raise RaycartError("Ray was imported before RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 was set, so a "
                               "local Ray would listen on every interface; call "
                               "training.common.ray_env.loopback_before_import() first (the raycart CLI does)")
        runtime_env = None
        if dashboard:
            # Ray's own processes that use the State API (Ray Train's placement-group cleaner) find
            # their cluster through RAY_ADDRESS, else by scanning for GCS processes -- which fails
            # when another Ray runs on the same machine. Pick the GCS port, and tell every worker.
            port = _free_port()
            os.environ["RAY_GCS_SERVER_PORT"] = str(port)
            runtime_env = {"env_vars": {"RAY_ADDRESS": f"127.0.0.1:{port}"}}
        try:
            ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=dashboard, dashboard_host="127.0.0.1",
                     _node_ip_address="127.0.0.1", configure_logging=False, runtime_env=runtime_env,
                     log_to_driver=verbose())
        finally:
            os.environ.pop("RAY_GCS_SERVER_PORT", None)
    quiet_ray()
    if not verbose():
        import logging

        logging.getLogger(__name__).info(f"[ray] Ray's own output goes to {_session_logs()} "
                                         "(raycart --verbose shows it here)")
    return ray


def _session_logs() -> str:
    """The current Ray session's log folder on this node."""
    import ray

    try:
        return str(ray._private.worker.global_worker.node.get_logs_dir_path())
    except Exception:  # noqa: BLE001 -- a detail of Ray's internals; the line still helps
        return "/tmp/ray/session_latest/logs"
