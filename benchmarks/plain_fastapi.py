"""Baseline for the Serve benchmark: the **same** ``RecommendService`` and HTTP edge as the Serve
app (:mod:`serving.core.service`, :mod:`serving.edge.http`) in ONE plain uvicorn process, no Ray: its stages
are called in-process (:class:`~serving.core.local.LocalBackend`), the user state is an in-process
:class:`~serving.state.memory.MemoryUserState` (journaled like the embedded store), the feedback log
the same durable WAL. Only the process layout differs, so ``benchmarks/serve_load.py`` states
Ray Serve's overhead as a ratio of like with like.

    .venv/bin/python benchmarks/plain_fastapi.py --model DIR --data DIR --port 8001 --workdir DIR
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serving.core.catalog import Catalog
from serving.core.local import LocalBackend, LocalState
from serving.core.schemas import AppArgs
from serving.core.service import RecommendService, user_state_config
from serving.edge.http import EdgeLog, Runtime, configure, open_feedback_log
from serving.state.memory import MemoryUserState


def make_app(args: AppArgs):
    edge = EdgeLog(open_feedback_log(args, "plain"))
    state = LocalState(MemoryUserState(user_state_config(args), args.state_dir))
    service = RecommendService(args, Catalog.load(args.data_dir), LocalBackend(args), state, edge.append)
    return configure(Runtime(service, edge), args)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--app-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="override an AppArgs field (as serve_load.py passes it to every setup)")
    a = p.parse_args()
    import yaml

    extra = {k: yaml.safe_load(v) for k, v in (x.split("=", 1) for x in a.app_arg)}
    w = a.workdir
    args = AppArgs(model_dir=a.model, data_dir=a.data, feedback_root=f"{w}/feedback", wal_dir=f"{w}/wal",
                   policy_state=f"{w}/policy.npz", items_root=f"{w}/items", state_dir=f"{w}/state",
                   **{"trust_loopback": True, **extra})  # no keys: the load comes from this machine
    uvicorn.run(make_app(args), host="127.0.0.1", port=a.port, log_level="warning")


if __name__ == "__main__":
    main()
