"""Clients that keep asking ``POST /recommend`` while something changes under them (a rollout)."""

import threading
import time
from collections.abc import Callable
from typing import Self

import requests


class RecommendStream:
    """One thread per user streams ``/recommend``; ``answers`` collects ``(status, model_version)``
    (the response text instead of the version when not 200; status 0 when the request failed)."""

    def __init__(self, url: str, users: list[str], timeout_s: float = 60, pause_s: float = 0.0):
        self.url, self.users, self.timeout_s, self.pause_s = url, users, timeout_s, pause_s
        self.answers: list[tuple[int, str | None]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(u,), daemon=True) for u in users]

    def _client(self, user: str) -> None:
        while not self.stop.is_set():
            try:
                r = requests.post(self.url + "/recommend", json={"user_id": user, "k": 3}, timeout=self.timeout_s)
                self.answers.append((r.status_code, r.json().get("model_version") if r.status_code == 200 else r.text))
            except requests.RequestException as exc:
                self.answers.append((0, str(exc)))
            time.sleep(self.pause_s)

    def wait_until(self, done: Callable[[list], bool], timeout_s: float, poll_s: float = 0.2) -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline and not done(self.answers):
            time.sleep(poll_s)

    def __enter__(self) -> Self:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()
