"""Clients that keep asking ``POST /recommend`` (and ``/feedback``) while something changes under them
(a rollout, a lost node, a restarted GCS)."""

import threading
import time
from collections.abc import Callable
from typing import Self

import requests


class _Threads:
    """Client threads (``self.threads``, started on enter) that run until ``self.stop`` is set."""

    stop: threading.Event
    threads: list[threading.Thread]

    def __enter__(self) -> Self:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()


class RecommendStream(_Threads):
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


class ShopperStream(_Threads):
    """Shoppers at a bounded rate: each thread asks ``/recommend`` and sends a click on the first
    item to ``/feedback``, then pauses so the whole stream stays near ``rate`` requests a second.
    Every request is recorded as ``(start time, path, status, seconds)`` (status 0: no answer);
    ``acked`` holds the ``(request_id, item_id, event)`` of every feedback the app acknowledged
    (200) and ``shown`` the ``(request_id, item_id)`` of every slate it answered."""

    def __init__(self, url: str, users: list[str], threads: int = 4, rate: float = 8.0, timeout_s: float = 30):
        self.url, self.users, self.timeout_s = url, users, timeout_s
        self.pause_s = threads / rate
        self.requests: list[tuple[float, str, int, float]] = []
        self.acked: list[tuple[str, str, str]] = []
        self.shown: list[tuple[str, str]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(threads)]

    def _call(self, path: str, body: dict) -> requests.Response | None:
        start = time.time()
        try:
            r = requests.post(self.url + path, json=body, timeout=self.timeout_s)
        except requests.RequestException:
            self.requests.append((start, path, 0, time.time() - start))
            return None
        self.requests.append((start, path, r.status_code, time.time() - start))
        return r

    def _client(self, i: int) -> None:
        n = 0
        while not self.stop.is_set():
            user = self.users[(i * 7919 + n) % len(self.users)]
            n += 1
            r = self._call("/recommend", {"user_id": user, "k": 3})
            if r is not None and r.status_code == 200:
                body = r.json()
                self.shown.extend((body["request_id"], it["item_id"]) for it in body["items"])
                click = {"request_id": body["request_id"], "item_id": body["items"][0]["item_id"], "event": "click"}
                f = self._call("/feedback", click)
                if f is not None and f.status_code == 200:
                    self.acked.append((click["request_id"], click["item_id"], click["event"]))
            self.stop.wait(self.pause_s)

    def failed(self, since: float = 0.0, until: float = float("inf")) -> list[tuple[float, str, int, float]]:
        return [r for r in self.requests if since <= r[0] < until and r[2] != 200]
