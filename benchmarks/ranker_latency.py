"""Ranking latency per request: the ranker over 200 candidates, and the whole two-stage path.

Loads a ranker directory (no Ray) and times, on real test-user histories of its dataset, with one
thread (what a 1-CPU Serve replica gets) and with every core:

* ``rank only``: the ranker's forward pass over precomputed 200-candidate lists (the part that
  grows with the candidate count);
* ``retrieve + features + rank``: :meth:`Pipeline.recommend`, i.e. retriever user tower +
  exact dot-product search over the catalogue + item-kNN and popularity features + ranker + reasons;
* ``retrieve only``: the retriever's top 200 (the baseline the ranker is added to).

Batch 1 (one request) and batch 32 (a ``@serve.batch`` of 32 requests); latency per call, p50/p95/p99
over ``--requests`` calls after a warm-up.

    .venv/bin/python benchmarks/ranker_latency.py --model raycart-work/models/beauty-ranker \\
        --data raycart-work/data/beauty
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from training.data.dataset import load_dataset
from training.data.splits import build_split, split_from_manifest
from training.evaluation.metrics import top_k
from training.inference.modeldir import load_model, read_card


def _timed(fn, calls: int, warmup: int = 3) -> np.ndarray:
    for _ in range(warmup):
        fn(0)
    out = []
    for i in range(calls):
        t0 = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - t0) * 1000)
    return np.array(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="raycart-work/models/beauty-ranker")
    ap.add_argument("--data", default="raycart-work/data/beauty")
    ap.add_argument("--requests", type=int, default=200, help="timed calls per row (bounded)")
    ap.add_argument("--out", default="benchmarks/results/ranker_latency.json")
    args = ap.parse_args()
    card = read_card(args.model)
    pipeline = load_model(args.model, card)
    ds = load_dataset(args.data)
    test = build_split(ds, split_from_manifest(ds, card.trained_on.scheme), "test")
    k = pipeline.k
    rng = np.random.default_rng(0)
    rows = rng.choice(len(test.users), size=32 * 8, replace=False)
    hist_all = test.history.take_users(rows)
    cands = pipeline.generator.generate(hist_all, k)

    def batch(i: int, b: int) -> np.ndarray:
        lo = (i * b) % (len(rows) - b + 1)
        return np.arange(lo, lo + b)

    results = []
    for threads in sorted({1, os.cpu_count() or 1}):
        torch.set_num_threads(threads)
        for b in (1, 32):
            calls = args.requests if b == 1 else max(10, args.requests // 8)

            def rank_only(i, b=b):
                idx = batch(i, b)
                sub = hist_all.take_users(idx)
                from training.inference.candidates import Candidates
                pipeline.rank(sub, Candidates(idx, cands.items[idx], cands.dense[idx], cands.label[idx]))

            def two_stage(i, b=b):
                pipeline.recommend(hist_all.take_users(batch(i, b)), n=10)

            def retrieve_only(i, b=b):
                with torch.no_grad():
                    s = pipeline.generator.retriever.score(None, hist_all.take_users(batch(i, b)))
                    top_k(s, k)

            for name, fn in (("rank only", rank_only), ("retrieve + features + rank", two_stage),
                             ("retrieve only", retrieve_only)):
                ms = _timed(fn, calls)
                row = {"path": name, "threads": threads, "batch": b, "calls": calls, "candidates": k,
                       "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
                       "p99_ms": float(np.percentile(ms, 99)), "per_request_ms": float(np.median(ms) / b)}
                results.append(row)
                print(f"  {name:<28} threads {threads} batch {b:>2}: p50 {row['p50_ms']:.1f} ms", flush=True)
    head = f"{'path':<28} {'thr':>3} {'batch':>5} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'ms/request':>10}"
    print("\n" + head + "\n" + "-" * len(head))
    for r in results:
        print(f"{r['path']:<28} {r['threads']:>3} {r['batch']:>5} {r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} "
              f"{r['p99_ms']:>8.1f} {r['per_request_ms']:>10.2f}")
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU",
            "model": args.model, "data": args.data, "catalogue": ds.num_items, "torch": torch.__version__}
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": results}, indent=2) + "\n")
    _plot(results, Path(args.out).with_suffix(".png"))
    print(f"wrote {args.out}")


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    labels = [f"{r['path']}\n{r['threads']} thr, batch {r['batch']}" for r in rows]
    ax.barh(range(len(rows)), [r["per_request_ms"] for r in rows], color="tab:blue")
    ax.set_yticks(range(len(rows)), labels, fontsize=6)
    ax.set_xlabel("median ms per request")
    ax.set_title("Ranking latency (200 candidates)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
