"""Vector index: recall of HNSW against exact search, and query latency of both, on real vectors.

Item vectors and user vectors (real test histories) come from a trained retriever directory;
the search is what the Serve retriever runs (``serving/core/index.py``), top ``--k`` per query.

    .venv/bin/python benchmarks/index_recall.py --model raycart-work/models/beauty-retriever \\
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

from serving.core.index import IndexConfig, VectorIndex
from training.data.dataset import load_dataset
from training.data.splits import build_split, split_from_manifest
from training.inference.modeldir import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="raycart-work/models/beauty-retriever")
    ap.add_argument("--data", default="raycart-work/data/beauty")
    ap.add_argument("--k", type=int, default=200)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--out", default="benchmarks/results/index_recall.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    scorer = load_model(args.model)
    ds = load_dataset(args.data)
    test = build_split(ds, split_from_manifest(ds, "loo"), "test")
    rows = np.random.default_rng(0).choice(len(test.users), size=min(args.queries, len(test.users)), replace=False)
    users = scorer.user_vectors(test.history.take_users(rows)).numpy()
    items = scorer.item_vecs.numpy()
    exact = VectorIndex(items, IndexConfig(exact_limit=len(items) + 1))
    e_ids, _ = exact.search(users, args.k)
    out = []
    for name, cfg in [("exact (IndexFlatIP)", IndexConfig(exact_limit=len(items) + 1)),
                      ("HNSW M=32 ef=128", IndexConfig(exact_limit=0, ef_search=128)),
                      ("HNSW M=32 ef=256", IndexConfig(exact_limit=0, ef_search=256))]:
        t0 = time.time()
        index = VectorIndex(items, cfg)
        build = time.time() - t0
        lat = []
        for q in users[:200]:
            t1 = time.perf_counter()
            index.search(q[None], args.k)
            lat.append((time.perf_counter() - t1) * 1000)
        ids, _ = index.search(users, args.k)
        recall = float(np.mean([len(np.intersect1d(ids[i], e_ids[i])) / args.k for i in range(len(users))]))
        out.append({"index": name, "items": len(items), "dim": items.shape[1], "k": args.k,
                    f"recall@{args.k}": recall, "build_s": round(build, 3),
                    "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))})
    head = f"{'index':<22} {'items':>7} {'recall@' + str(args.k):>11} {'build s':>8} {'p50 ms':>7} {'p99 ms':>7}"
    print(head + "\n" + "-" * len(head))
    for r in out:
        print(f"{r['index']:<22} {r['items']:>7,} {r[f'recall@{args.k}']:>11.4f} {r['build_s']:>8.2f} "
              f"{r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f}")
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores, 1 thread",
            "model": args.model, "queries": len(users)}
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": out}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
