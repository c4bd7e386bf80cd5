"""Which TCP listeners the test processes hold: the loopback-only rule, checked with ``ss -ltnp``."""

import re
import subprocess
import threading
from pathlib import Path

LOOPBACK = ("127.0.0.1:", "[::ffff:127.0.0.1]:", "[::1]:")


def listeners() -> list[tuple[str, str]]:
    """``(local address, command line)`` of every listening TCP socket owned by a Ray, Python or
    SeaweedFS process, from ``ss -ltnp``."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        if not re.search(r'"(ray|raylet|gcs_server|python|weed)', line):
            continue
        pid = re.search(r"pid=(\d+)", line).group(1)
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ").strip()[:200]
        except OSError:
            cmd = "?"
        found.append((line.split()[3], cmd))
    return found


class ListenerWatch:
    """Samples :func:`listeners` in a background thread (while a training run is going on) and keeps
    every one not bound to loopback."""

    def __init__(self, every_s: float = 0.25):
        self.every_s, self.samples, self.outside = every_s, 0, set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for local, cmd in listeners():
                if not local.startswith(LOOPBACK):
                    self.outside.add((local, cmd))
            self.samples += 1
            self._stop.wait(self.every_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=10)
