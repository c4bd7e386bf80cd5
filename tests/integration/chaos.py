"""Kill a Ray Train worker mid-run, once its checkpoints are registered (not merely written)."""

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path


def train_worker_pids() -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    return [int(line.split()[0]) for line in out.splitlines() if "RayTrainWorker" in line and "ps -eo" not in line]


def registered_checkpoints(runs: Path) -> int:
    """Checkpoints the Ray Train controller has committed (``checkpoint_manager_snapshot.json``):
    a checkpoint directory on disk that is not yet in the snapshot does not count for a restart."""
    best = 0
    for snap in runs.glob("*/checkpoint_manager_snapshot.json"):
        try:
            best = max(best, len(json.loads(snap.read_text()).get("checkpoint_report_indices", [])))
        except (OSError, ValueError):
            continue
    return best


class WorkerKiller:
    """In a thread: once ``after`` checkpoints are registered under ``runs``, SIGKILL one training
    worker; ``killed`` holds its pid."""

    def __init__(self, runs: Path, after: int = 2, timeout_s: float = 300):
        self.runs, self.after, self.timeout_s, self.killed = runs, after, timeout_s, []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        deadline = time.time() + self.timeout_s
        while time.time() < deadline:
            if registered_checkpoints(self.runs) >= self.after:
                pids = train_worker_pids()
                if pids:
                    os.kill(pids[-1], signal.SIGKILL)
                    self.killed.append(pids[-1])
                    return
            time.sleep(0.1)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._thread.join(timeout=5)
