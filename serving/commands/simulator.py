"""Closed-loop shoppers: simulated users with known tastes use a live Raycart app over HTTP.

Each round, every shopper asks ``/recommend`` (``k`` items), clicks a shown item of their current
taste with probability ``p_click_taste`` and any other with ``p_click_other`` -- times the chance
they look at the slot at all, ``1 / (1 + slot) ** position_decay`` (a position-based examination
model; 0, the default, looks at every slot) -- buys a clicked
item with ``p_buy``, and sends each event to ``/feedback``. Tastes are the synthetic shop's
planted ones (users' ``taste_category=...`` attributes); after ``drift_after`` rounds every shopper
switches to one category that was not theirs (the drift phase). Per round it reports the CTR, the
reward (the policy's reward scale: click 1, cart 2, purchase 5) per shown item, the share of shown
items in the shopper's current taste and the share chance would give, and request latencies.

Plain Python over HTTP (no Ray): ``benchmarks/closed_loop.py`` runs it against a learning and a
no-learning app; ``raycart simulate --url ... --data ...`` against any running app.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlparse

import numpy as np

log = logging.getLogger(__name__)

REWARD = {"click": 1.0, "purchase": 5.0}


@dataclass(frozen=True)
class SimConfig:
    rounds: int = 12
    drift_after: int = 4  # rounds with the planted tastes; then every shopper switches
    shoppers: int = 200
    k: int = 10
    p_click_taste: float = 0.35
    p_click_other: float = 0.02
    p_buy: float = 0.2  # of a click
    position_decay: float = 0.0  # examination of slot j: 1 / (1 + j) ** position_decay
    concurrency: int = 8  # shoppers in flight at once
    seed: int = 0

    def __post_init__(self):
        if self.position_decay < 0:
            raise ValueError("position_decay must be >= 0")
        if not 0 <= self.drift_after <= self.rounds or self.rounds < 1 or self.shoppers < 1 or self.k < 1:
            raise ValueError("need rounds >= 1, 0 <= drift_after <= rounds, shoppers >= 1, k >= 1")
        for name in ("p_click_taste", "p_click_other", "p_buy"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a probability")

    @classmethod
    def tiny(cls) -> SimConfig:
        return cls(rounds=4, drift_after=2, shoppers=10, k=5, concurrency=2)


@dataclass
class Shop:
    """What the simulator knows of the shop: each item's category, each shopper's tastes."""

    item_category: dict[str, str]
    tastes: dict[str, set[str]]  # user id -> planted taste categories
    categories: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, data: str) -> Shop:
        from training.data.dataset import load_dataset

        ds = load_dataset(data)
        cats = dict(zip(ds.items["external_id"].to_pylist(), ds.items["category"].to_pylist()))
        tastes = {}
        for uid, attrs in zip(ds.users["external_id"].to_pylist(), ds.users["attributes"].to_pylist()):
            taste = {a.split("=", 1)[1] for a in attrs or [] if a.startswith("taste_category=")}
            if taste:
                tastes[uid] = taste
        if not tastes:
            raise ValueError(f"{data}: no user has a planted taste_category (use a synthetic shop)")
        return cls(cats, tastes, sorted({c for c in cats.values() if c}))


class _Client:
    """One keep-alive HTTP connection per thread."""

    def __init__(self, url: str, timeout: float):
        self.url, self.timeout, self.local = urlparse(url), timeout, threading.local()
        if not self.url.hostname:
            raise ValueError(f"not an http://host:port URL: {url!r}")
        self.host: str = self.url.hostname

    def post(self, path: str, body: dict) -> tuple[int, dict, float]:
        t = time.perf_counter()
        for attempt in range(2):
            conn = getattr(self.local, "conn", None)
            if conn is None:
                conn = self.local.conn = http.client.HTTPConnection(self.host, self.url.port,
                                                                   timeout=self.timeout)
            try:
                conn.request("POST", path, json.dumps(body), {"content-type": "application/json"})
                r = conn.getresponse()
                data = r.read()
                return r.status, json.loads(data or b"{}"), time.perf_counter() - t
            except (OSError, http.client.HTTPException):
                conn.close()
                self.local.conn = None
                if attempt:
                    return 0, {}, time.perf_counter() - t
        return 0, {}, time.perf_counter() - t


def simulate(url: str, shop: Shop, cfg: SimConfig, progress=print) -> dict:
    """Run the rounds; returns ``{"config", "rounds": [per-round metrics], "summary"}``. The
    latencies are of ``/recommend`` (``p50_ms``, ``p99_ms``) and ``/feedback`` (``feedback_p50_ms``)."""
    rng = np.random.default_rng(cfg.seed)
    users = sorted(shop.tastes)
    chosen = [users[i] for i in rng.choice(len(users), min(cfg.shoppers, len(users)), replace=False)]
    drift = {}
    for u in chosen:
        others = [c for c in shop.categories if c not in shop.tastes[u]]
        drift[u] = {others[int(rng.integers(len(others)))]} if others else shop.tastes[u]
    seeds = rng.integers(0, 2**31, size=(cfg.rounds, len(chosen)))
    client = _Client(url, timeout=60)
    share_of = {c: sum(1 for x in shop.item_category.values() if x == c) / len(shop.item_category)
                for c in shop.categories}

    def shopper(rnd: int, i: int) -> dict:
        """One shopper's round: ask, look, click, buy, report."""
        user = chosen[i]
        taste = drift[user] if rnd >= cfg.drift_after else shop.tastes[user]
        r = np.random.default_rng(seeds[rnd, i])
        status, body, latency = client.post("/recommend", {"user_id": user, "k": cfg.k})
        out: dict[str, Any]  # counts, latency lists and the state: one shopper's round
        out = {"ok": status == 200, "shown": 0, "in_taste": 0, "clicks": 0, "reward": 0.0,
               "chance": sum(share_of.get(c, 0.0) for c in taste), "latency": [latency], "fb_latency": [],
               "fb_failed": 0,
               "state": body.get("state")}
        if status != 200:
            return out
        for slot, item in enumerate(body["items"]):
            hit = shop.item_category.get(item["item_id"]) in taste
            out["shown"] += 1
            out["in_taste"] += hit
            seen = (1 + slot) ** -cfg.position_decay
            if r.random() < seen * (cfg.p_click_taste if hit else cfg.p_click_other):
                events = ["click"] + (["purchase"] if r.random() < cfg.p_buy else [])
                for ev in events:
                    st, _, lat = client.post("/feedback", {"request_id": body["request_id"],
                                                           "item_id": item["item_id"], "event": ev})
                    out["fb_latency"].append(lat)
                    out["fb_failed"] += st != 200
                    out["reward"] += REWARD[ev]
                out["clicks"] += 1
        return out

    rounds = []
    for rnd in range(cfg.rounds):
        drifted = rnd >= cfg.drift_after
        t = time.time()
        with ThreadPoolExecutor(cfg.concurrency) as pool:
            res = list(pool.map(lambda i, r=rnd: shopper(r, i), range(len(chosen))))
        shown = sum(x["shown"] for x in res)
        lat = np.array([v for x in res for v in x["latency"]]) * 1000  # /recommend
        fb = np.array([v for x in res for v in x["fb_latency"]]) * 1000
        row = {"round": rnd + 1, "phase": "drift" if drifted else "stationary",
               "taste_share": sum(x["in_taste"] for x in res) / max(shown, 1),
               "chance_share": float(np.mean([x["chance"] for x in res])),
               "ctr": sum(x["clicks"] for x in res) / max(shown, 1),
               "reward_per_item": sum(x["reward"] for x in res) / max(shown, 1),
               "failed_requests": sum(not x["ok"] for x in res) + sum(x["fb_failed"] for x in res),
               "recommends": len(lat), "feedbacks": len(fb),
               "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
               "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
               "feedback_p50_ms": float(np.percentile(fb, 50)) if len(fb) else None,
               "seconds": round(time.time() - t, 2)}
        rounds.append(row)
        progress(f"[simulate] round {row['round']:>2}/{cfg.rounds} {row['phase']:<10} taste share "
                 f"{row['taste_share']:.3f} (chance {row['chance_share']:.3f})  CTR {row['ctr']:.3f}  "
                 f"reward/item {row['reward_per_item']:.3f}  /recommend p50 {row['p50_ms']:.0f} ms  "
                 f"failed {row['failed_requests']}  {row['seconds']:.0f}s")
    return {"config": asdict(cfg), "url": url, "rounds": rounds, "summary": summarize(rounds, cfg)}


def summarize(rounds: list[dict], cfg: SimConfig) -> dict:
    """Stationary share (mean of its rounds), the drift rounds, and the first drift round (1-based
    within the drift phase) back at >= 80 % of the stationary share."""
    stat = [r for r in rounds if r["phase"] == "stationary"]
    drift = [r for r in rounds if r["phase"] == "drift"]
    s_share = float(np.mean([r["taste_share"] for r in stat])) if stat else None
    recovered = None
    if s_share is not None:
        for i, r in enumerate(drift):
            if r["taste_share"] >= 0.8 * s_share:
                recovered = i + 1
                break
    return {"stationary_share": s_share,
            "stationary_chance": float(np.mean([r["chance_share"] for r in stat])) if stat else None,
            "drift_share_last": drift[-1]["taste_share"] if drift else None,
            "drift_chance": float(np.mean([r["chance_share"] for r in drift])) if drift else None,
            "rounds_to_recover": recovered,
            "ctr": float(np.mean([r["ctr"] for r in rounds])),
            "reward_per_item": float(np.mean([r["reward_per_item"] for r in rounds])),
            "failed_requests": int(sum(r["failed_requests"] for r in rounds))}


def _cmd(a: argparse.Namespace) -> int:
    cfg = SimConfig(rounds=a.rounds, drift_after=a.drift_after, shoppers=a.shoppers, k=a.k, seed=a.seed,
                    concurrency=a.concurrency)
    result = simulate(a.url.rstrip("/"), Shop.load(a.data), cfg)
    s = result["summary"]
    log.info(f"[simulate] stationary taste share {s['stationary_share']:.3f} (chance {s['stationary_chance']:.3f}); "
          f"after the drift: {s['drift_share_last']:.3f} in the last round (chance {s['drift_chance']:.3f}), "
          f"back to 80 % of the stationary share after "
          f"{s['rounds_to_recover'] if s['rounds_to_recover'] else 'no'} round(s); CTR {s['ctr']:.3f}")
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(result, fh, indent=1)
        log.info(f"[simulate] -> {a.out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="closed-loop shoppers against a running app (synthetic shop)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="the running app, e.g. http://127.0.0.1:8000")
    p.add_argument("--data", required=True, help="the synthetic shop it serves (planted tastes)")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--drift-after", type=int, default=4)
    p.add_argument("--shoppers", type=int, default=200)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the per-round results as JSON")
    p.set_defaults(func=_cmd)
