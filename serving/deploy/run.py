"""Starting, (re)deploying and stopping the Raycart Serve application: the one place that calls
``serve.start`` / ``serve.run`` / ``serve.delete`` / ``serve.shutdown`` (``raycart serve``,
``raycart demo`` and the retrain job's promotion go through here).

An application is named by the **import path** of its builder plus its arguments, as in Serve's
own config (``cluster/serve.yaml``: ``import_path: serving.deploy.app:build_app`` and ``args``).
So a caller in a higher layer -- a job promoting a model -- deploys the app declaratively, without
importing the app graph itself::

    run_app(APP_BUILDER, {"model_dir": ..., "data_dir": ...})
"""

from __future__ import annotations

from ray import serve

from serving.core.schemas import AppArgs
from training.common.importpath import resolve

APP_NAME = "raycart"
APP_BUILDER = "serving.deploy.app:build_app"  # cluster/serve.yaml's import_path


def run_app(import_path: str, args: dict | AppArgs, name: str = APP_NAME) -> None:
    """Deploy (or redeploy: Serve rolls the replicas, no request dropped) the app that the builder at
    ``import_path`` makes from ``args``, under ``name`` at route ``/``; returns once it is running."""
    serve.run(resolve(import_path)(args), name=name, route_prefix="/")


def start_app(args: dict | AppArgs, host: str, port: int, http_timeout_s: float | None = None,
              import_path: str = APP_BUILDER) -> None:
    """Start Serve's HTTP proxy on ``host:port`` and run the app there (:func:`run_app`).

    Args:
        http_timeout_s: the proxy's ``request_timeout_s``; None: 5 s more than the app's own
            (``AppArgs.request_timeout_s``), so the app answers its 504 before the proxy gives up.
    """
    if http_timeout_s is None:
        http_timeout_s = (args if isinstance(args, AppArgs) else AppArgs(**args)).request_timeout_s + 5
    serve.start(http_options={"host": host, "port": port, "request_timeout_s": http_timeout_s})
    run_app(import_path, args)


def stop_app(name: str = APP_NAME) -> None:
    """Delete the app (its replicas shut down gracefully: the feedback log is flushed, the policy
    checkpointed) and stop Serve."""
    serve.delete(name)
    serve.shutdown()
