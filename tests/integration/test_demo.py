"""`raycart demo --smoke`: the main job's whole path (data, baselines, Ray Train, Ray Serve on
127.0.0.1, real requests, clean shutdown) as a user runs it, in a fresh process."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_demo_smoke_runs_the_whole_path(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    raycart = Path(sys.executable).with_name("raycart")
    run = subprocess.run([str(raycart), "demo", "--smoke", "--workdir", str(tmp_path), "--port", str(port)],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "RAY_ADDRESS": ""})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads((tmp_path / "demo-smoke.json").read_text())
    statuses = {r["request"].split(" ")[0] + " " + r["request"].split(" ")[1]: r["status"] for r in summary["requests"]}
    assert [r["status"] for r in summary["requests"]] == [200, 200, 200, 201, 200, 422, 200], summary["requests"]
    assert statuses["GET /items/demo-new-item/similar"] == 200
    loop = summary["requests"][-1]  # the online loop: a click and a cart change the next answer
    assert loop["changed"] >= 1, loop
    assert summary["feedback_log"]["impressions"] >= 10 and summary["feedback_log"]["events"] == 3
    for name in ("retriever", "ranker (two-stage)"):
        assert 0 < summary[name]["NDCG@10"] <= 1
    assert "shutting down" in run.stdout and "because you saw" in run.stdout
