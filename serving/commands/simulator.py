"""Closed-loop shoppers: simulated users with known tastes use a live Raycart app.

Each round, every shopper asks ``/recommend`` (``k`` items), looks at slot ``j`` with probability
``1 / (1 + j) ** position_decay`` (position bias; 0 looks at every slot), clicks a looked-at item
with ``p_click_other + (p_click_taste - p_click_other) x`` its category's weight in the shopper's
current taste (1 for a shopper's main taste), buys a clicked item with ``p_buy``, and sends each
event to ``/feedback``. Tastes are the synthetic shop's planted ones (users' ``taste_category=...``
attributes). After ``drift_after`` rounds every shopper moves to one category that was not theirs:
at once (``drift_span`` 1), or gradually, the new taste's weight growing over ``drift_span`` rounds.

The harder shoppers of :meth:`SimConfig.hard` add what real ones do: **satiation** (an item already
clicked is clicked with ``satiation`` x the probability, one already bought bought with ``rebuy`` x),
**position bias**, **several weighted tastes** (``second_taste``: a further category the models never
saw, at that weight) and a share of **shoppers who never click** (``nonclickers``).

Per round it reports the CTR, the reward (the policy's scale: click 1, purchase 5) per shown item,
the **taste share** (shown items weighted by their category's weight in the current taste, so 1 =
every item in the main taste) and what chance would give, and request latencies.

``target`` is the app's URL (HTTP), any object with the client's ``post(path, body)`` (e.g.
``benchmarks/closed_loop.py``'s in-process service), or :class:`Oracle`: the explorer that knows
when each taste moved and bounds what any policy can reach in the same simulation.
Plain Python (no Ray): ``benchmarks/closed_loop.py`` runs it against learning and no-learning apps;
``raycart simulate --url ... --data ...`` against any running app.
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
    drift_after: int = 4  # rounds with the planted tastes; then every shopper moves to another category
    shoppers: int = 200
    k: int = 10
    p_click_taste: float = 0.35
    p_click_other: float = 0.02
    p_buy: float = 0.2  # of a click
    position_decay: float = 0.0  # examination of slot j: 1 / (1 + j) ** position_decay
    drift_span: int = 1  # rounds over which the new taste takes over (1: an abrupt switch)
    satiation: float = 1.0  # click probability factor for an item the shopper already clicked
    rebuy: float = 1.0  # purchase probability factor for an item the shopper already bought
    second_taste: float = 0.0  # weight of a further taste (a category the models never saw); 0 = none
    nonclickers: float = 0.0  # share of shoppers who never click
    concurrency: int = 8  # shoppers in flight at once
    seed: int = 0

    def __post_init__(self):
        if self.position_decay < 0:
            raise ValueError("position_decay must be >= 0")
        if not 0 <= self.drift_after <= self.rounds or self.rounds < 1 or self.shoppers < 1 or self.k < 1:
            raise ValueError("need rounds >= 1, 0 <= drift_after <= rounds, shoppers >= 1, k >= 1")
        if self.drift_span < 1 or self.concurrency < 1:
            raise ValueError("drift_span and concurrency must be >= 1")
        for name in ("p_click_taste", "p_click_other", "p_buy", "satiation", "rebuy", "second_taste",
                     "nonclickers"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a probability (in [0, 1])")

    @classmethod
    def tiny(cls) -> SimConfig:
        return cls(rounds=4, drift_after=2, shoppers=10, k=5, concurrency=2)

    @classmethod
    def hard(cls, **overrides) -> SimConfig:
        """Satiation, position bias, a second weighted taste, a gradual drift over 3 rounds and 10 %
        of shoppers who never click."""
        return cls(**{"position_decay": 0.5, "drift_span": 3, "satiation": 0.3, "rebuy": 0.1,
                      "second_taste": 0.5, "nonclickers": 0.1, **overrides})


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


class Oracle:
    """The best explorer a simulation allows: it knows when each shopper's taste moved (not where
    to). From then until the shopper clicks an item of a new taste, each slot shows one item of
    the next category in a shuffled cycle over every category but the old tastes (so an answer of
    ``k`` covers ``k`` untried categories, and the next answer goes on where it stopped); once
    found, and before any move, it exploits at ``share``: each slot from the current tastes, by
    weight, with probability ``share`` (the stationary level of the app it is compared with)."""

    def __init__(self, shop: Shop, share: float = 0.8, seed: int = 0):
        if not 0 < share <= 1:
            raise ValueError(f"oracle share must be in (0, 1], got {share}")
        self.by_category: dict[str, list[str]] = {}
        for item, category in sorted(shop.item_category.items()):
            self.by_category.setdefault(category, []).append(item)
        self.categories, self.share = sorted(self.by_category), share
        self.rng = np.random.default_rng(seed)
        # user -> (new tastes, old tastes, the categories still to try in this cycle)
        self.searching: dict[str, tuple[set[str], set[str], list[str]]] = {}
        self.lock = threading.Lock()

    def moved(self, user: str, new: set[str], old: set[str]) -> None:
        with self.lock:
            self.searching[user] = (set(new), set(old), [])

    def clicked(self, user: str, category: str) -> None:
        with self.lock:
            if user in self.searching and category in self.searching[user][0]:
                del self.searching[user]

    def slate(self, user: str, weights: dict[str, float], k: int) -> list[str]:
        with self.lock:
            rng, out = self.rng, list[str]()
            if user in self.searching:
                _, old, queue = self.searching[user]
                others = [c for c in self.categories if c not in old] or self.categories
                while len(out) < k:
                    if not queue:
                        queue.extend(others[i] for i in rng.permutation(len(others)))
                    out.append(self._item(queue.pop(0), out))
                return out
            cats = [c for c, w in weights.items() if w > 0 and c in self.by_category]
            p = np.array([weights[c] for c in cats]) / sum(weights[c] for c in cats) if cats else None
            while len(out) < k:
                if cats and rng.random() < self.share:
                    c = cats[int(rng.choice(len(cats), p=p))]
                else:
                    c = self.categories[int(rng.integers(len(self.categories)))]
                out.append(self._item(c, out))
            return out

    def _item(self, category: str, taken: list[str]) -> str:
        pool = self.by_category[category]
        for _ in range(20):
            item = pool[int(self.rng.integers(len(pool)))]
            if item not in taken:
                return item
        return item


def _tastes(shop: Shop, chosen: list[str], cfg: SimConfig, rng: np.random.Generator
            ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]], set[str]]:
    """Each shopper's stationary taste weights, the taste they move to, and who never clicks."""
    before, after = {}, {}
    for u in chosen:
        planted = shop.tastes[u]
        others = [c for c in shop.categories if c not in planted]
        w = {c: 1.0 for c in planted}
        if cfg.second_taste > 0 and len(others) > 1:
            extra = others.pop(int(rng.integers(len(others))))
            w[extra] = cfg.second_taste
        before[u] = w
        after[u] = {others[int(rng.integers(len(others)))]: 1.0} if others else dict(w)
    n_quiet = int(round(cfg.nonclickers * len(chosen)))
    quiet = {chosen[i] for i in rng.choice(len(chosen), n_quiet, replace=False)} if n_quiet else set()
    return before, after, quiet


def _weights(before: dict[str, float], after: dict[str, float], rnd: int, cfg: SimConfig) -> dict[str, float]:
    """The taste in round ``rnd`` (0-based): the new one's weight grows over ``drift_span`` rounds."""
    if rnd < cfg.drift_after:
        return before
    lam = min(1.0, (rnd - cfg.drift_after + 1) / cfg.drift_span)
    out = {c: (1 - lam) * w for c, w in before.items()}
    for c, w in after.items():
        out[c] = out.get(c, 0.0) + lam * w
    return {c: w for c, w in out.items() if w > 0}


def simulate(target: Any, shop: Shop, cfg: SimConfig, progress=print) -> dict:
    """Run the rounds against ``target`` (a URL, a client with ``post(path, body) -> (status,
    body, seconds)``, or an :class:`Oracle`); returns ``{"config", "rounds": [per-round metrics],
    "summary"}``. The latencies are of ``/recommend`` (``p50_ms``, ``p99_ms``) and ``/feedback``
    (``feedback_p50_ms``)."""
    rng = np.random.default_rng(cfg.seed)
    users = sorted(shop.tastes)
    chosen = [users[i] for i in rng.choice(len(users), min(cfg.shoppers, len(users)), replace=False)]
    before, after, quiet = _tastes(shop, chosen, cfg, rng)
    seeds = rng.integers(0, 2**31, size=(cfg.rounds, len(chosen)))
    oracle = target if isinstance(target, Oracle) else None
    client = _Client(target, timeout=60) if isinstance(target, str) else target
    share_of = {c: sum(1 for x in shop.item_category.values() if x == c) / len(shop.item_category)
                for c in shop.categories}
    clicked: dict[str, set[str]] = {u: set() for u in chosen}
    bought: dict[str, set[str]] = {u: set() for u in chosen}
    found: set[str] = set()  # shoppers who clicked an item of their new taste since it moved

    def shopper(rnd: int, i: int) -> dict:
        """One shopper's round: ask, look, click, buy, report."""
        user = chosen[i]
        taste = _weights(before[user], after[user], rnd, cfg)
        r = np.random.default_rng(seeds[rnd, i])
        body: dict[str, Any]
        if oracle is not None:
            if rnd == cfg.drift_after:
                oracle.moved(user, set(after[user]), set(before[user]))
            status, latency = 200, 0.0
            body = {"request_id": "", "items": [{"item_id": x} for x in oracle.slate(user, taste, cfg.k)]}
        else:
            status, body, latency = client.post("/recommend", {"user_id": user, "k": cfg.k})
        out: dict[str, Any]  # counts, latency lists and the state: one shopper's round
        out = {"ok": status == 200, "shown": 0, "in_taste": 0.0, "clicks": 0, "reward": 0.0,
               "chance": sum(share_of.get(c, 0.0) * w for c, w in taste.items()), "latency": [latency],
               "fb_latency": [], "fb_failed": 0, "state": body.get("state"),
               "explore_harder": bool(body.get("explore_harder"))}
        if status != 200:
            return out
        for slot, item in enumerate(body["items"]):
            item_id = item["item_id"]
            category = shop.item_category.get(item_id, "")  # "": an item the simulator does not know
            weight = taste.get(category, 0.0)
            out["shown"] += 1
            out["in_taste"] += weight
            p = (cfg.p_click_other + (cfg.p_click_taste - cfg.p_click_other) * weight) \
                * (1 + slot) ** -cfg.position_decay * (cfg.satiation if item_id in clicked[user] else 1.0)
            if user in quiet or not r.random() < p:
                continue
            buy = r.random() < cfg.p_buy * (cfg.rebuy if item_id in bought[user] else 1.0)
            clicked[user].add(item_id)
            if rnd >= cfg.drift_after and category in after[user]:
                found.add(user)
            if buy:
                bought[user].add(item_id)
            for ev in ["click"] + (["purchase"] if buy else []):
                if oracle is None:
                    st, _, lat = client.post("/feedback", {"request_id": body["request_id"],
                                                           "item_id": item_id, "event": ev})
                    out["fb_latency"].append(lat)
                    out["fb_failed"] += st != 200
                out["reward"] += REWARD[ev]
            if oracle is not None and category:
                oracle.clicked(user, category)
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
               "explore_harder_share": sum(x["explore_harder"] for x in res) / max(len(res), 1),
               # shoppers who have clicked an item of their new taste (by the end of the round)
               "found_share": len(found) / len(chosen) if drifted else None,
               "recommends": len(lat), "feedbacks": len(fb),
               "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
               "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
               "feedback_p50_ms": float(np.percentile(fb, 50)) if len(fb) else None,
               "seconds": round(time.time() - t, 2)}
        rounds.append(row)
        progress(f"[simulate] round {row['round']:>2}/{cfg.rounds} {row['phase']:<10} taste share "
                 f"{row['taste_share']:.3f} (chance {row['chance_share']:.3f})  CTR {row['ctr']:.3f}  "
                 f"reward/item {row['reward_per_item']:.3f}  explored harder {row['explore_harder_share']:.0%}  /recommend p50 {row['p50_ms']:.0f} ms  "
                 f"failed {row['failed_requests']}  {row['seconds']:.0f}s")
    return {"config": asdict(cfg), "url": target if isinstance(target, str) else type(target).__name__,
            "rounds": rounds, "summary": summarize(rounds, cfg)}


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
    summary = result["summary"]
    log.info(f"[simulate] stationary taste share {summary['stationary_share']:.3f} (chance {summary['stationary_chance']:.3f}); "
          f"after the drift: {summary['drift_share_last']:.3f} in the last round (chance {summary['drift_chance']:.3f}), "
          f"back to 80 % of the stationary share after "
          f"{summary['rounds_to_recover'] if summary['rounds_to_recover'] else 'no'} round(s); CTR {summary['ctr']:.3f}")
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
