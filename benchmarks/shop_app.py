"""The synthetic shop's trained models and a Serve app on 127.0.0.1 for the closed-loop benchmarks
(``closed_loop.py``, ``retrain_loop.py``): one place for the data, models, app arguments and deploy."""

from __future__ import annotations

from pathlib import Path


def shop_models(workdir: str) -> tuple[Path, str, dict]:
    """``(data dir, ranker dir, model metrics)`` of ``raycart demo --dataset shop`` (prepared and
    trained here, or reused); starts the local Ray."""
    from serving.commands.demo import SHOP, DemoConfig, train_models
    from training.common.ray_env import init_ray
    from training.data.prepare import prepare

    data = Path(workdir) / "data" / SHOP
    if not (data / "dataset.json").exists():
        prepare("synthetic", None, str(data))
    init_ray()
    ranker, metrics = train_models(DemoConfig(workdir=workdir, dataset=SHOP), str(data))
    return data, ranker, metrics


def start_serve() -> str:
    """Start Serve on a free port of 127.0.0.1; its URL."""
    from ray import serve

    from serving.state.redis_server import free_port

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return f"http://127.0.0.1:{port}"


def app_args(root: Path, model: str, data: Path | str, **extra) -> dict:
    """The app's arguments with every piece of state (log, WAL, policy, items, user state) under ``root``."""
    from training.common import storage
    return {"model_dir": storage.absolute(model), "data_dir": storage.absolute(str(data)),
            "feedback_root": str(root / "feedback"), "wal_dir": str(root / "wal"),
            "policy_state": str(root / "policy.npz"), "items_root": str(root / "items"),
            "state_dir": str(root / "state"), "trust_loopback": True, **extra}  # no keys: local clients


def deploy(url: str, args: dict) -> None:
    """(Re)deploy the app with ``args`` and wait until it answers ``/readyz``."""
    from ray import serve

    from serving.commands.demo import _wait_ready
    from serving.deploy.app import build_app

    serve.run(build_app(args), name="raycart", route_prefix="/")
    _wait_ready(url)
