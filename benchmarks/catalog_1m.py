"""A 1M-item catalogue: the vector index (exact, HNSW, IVF) and sampled-softmax retriever training.

Needs the synthetic shop at 1M items and a retriever trained on it (README "A 1M-item catalogue")::

    .venv/bin/raycart data prepare --source synthetic --output raycart-work/data/shop-1m \\
        --num-users 100000 --num-items 1000000 --num-events 2000000 --no-images
    .venv/bin/raycart train retriever --data raycart-work/data/shop-1m --out raycart-work/models/shop-1m-retriever \\
        --workers 1 --loss sampled --epochs 2 --valid-users 2000 --dim 64 --layers 1 --max-len 20 --batch-size 256
    .venv/bin/python benchmarks/catalog_1m.py [--phase index,train]

* ``index``: each index over the trained item vectors -- build time (2 threads), memory (the
  serialised index, what a replica holds besides the item table), recall@100 against exact search
  for real test users' vectors (by id, and tie-aware: a result scoring at least the exact 100th
  score counts), and queries/s at 1 and 16 clients (threads issuing one query at a
  time; each search on one thread, as in a replica).
* ``train``: the retriever's training step (forward, sampled softmax over 1,024 negatives with the
  log-Q correction, backward, Adam) in plain PyTorch on one thread over the shop's training
  sequences: samples/s and peak memory, each variant in its own process; the baseline is the step
  as it was before (every item's vector computed each step), measured in the same run.

* ``models``: what the training commands (BENCHMARKS.md "A 1M-item catalogue") wrote into their
  model directories -- test metrics, run seconds, per-epoch history -- copied here so the numbers
  quoted have a results file.
* ``request``: one ``/recommend`` through :class:`~serving.core.service.RecommendService` in one process
  (stages inline, IVF nprobe 256) on the 1M-item served model: p50 over 30 known users, each
  variant in its own process; the baseline is the ranker as it was before (every item's vector
  computed on each forward pass), measured in the same run.

Writes ``benchmarks/results/catalog_1m.json`` (phases merged into what is there).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks/results/catalog_1m.json"
K = 100


def _queries(model: str, data: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    import torch

    from training.data.dataset import load_dataset
    from training.data.splits import build_split, split_from_manifest
    from training.inference.modeldir import load_model

    torch.set_num_threads(2)
    scorer = load_model(model)
    ds = load_dataset(data)
    test = build_split(ds, split_from_manifest(ds, "loo"), "test")
    rows = np.random.default_rng(0).choice(len(test.users), size=min(n, len(test.users)), replace=False)
    users = scorer.user_vectors(test.history.take_users(rows)).numpy()
    return scorer.item_vecs.numpy(), users


def _qps(index, queries: np.ndarray, clients: int, budget_s: float, max_queries: int) -> float:
    """Queries/s with ``clients`` threads, each sending one query at a time (faiss releases the GIL)."""
    done = [0] * clients
    stop = time.perf_counter() + budget_s

    def client(c: int) -> None:
        i = c
        while time.perf_counter() < stop and done[c] < max_queries // clients:
            index.search(queries[i % len(queries)][None], K)
            done[c] += 1
            i += clients

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - t0)


def phase_index(a: argparse.Namespace) -> list[dict]:
    import faiss

    from serving.core.index import IndexConfig, VectorIndex

    items, users = _queries(a.model, a.data, a.queries)
    print(f"index: {len(items):,} items x {items.shape[1]} dims, {len(users):,} query users", flush=True)
    variants = [("exact (IndexFlatIP)", IndexConfig(kind="exact"), {})]
    for m, efc in ((16, 40), (32, 40)):
        variants.append((f"HNSW M={m} efC={efc}", IndexConfig(kind="hnsw", hnsw_m=m, ef_construction=efc),
                         {"ef_search": (128, 256, 512, 1024)}))
    variants.append(("IVF nlist=4096", IndexConfig(kind="ivf", ivf_nlist=4096), {"nprobe": (32, 64, 128, 256)}))
    rows, exact_ids = [], None
    for name, cfg, sweep in variants:
        faiss.omp_set_num_threads(2)
        t0 = time.perf_counter()
        index = VectorIndex(items, cfg)
        build = time.perf_counter() - t0
        memory = len(faiss.serialize_index(index.index))
        faiss.omp_set_num_threads(1)
        (knob, values), = sweep.items() if sweep else [(None, (None,))]
        for v in values:
            if knob == "ef_search":
                index.index.hnsw.efSearch = max(v, K)
            elif knob == "nprobe":
                index.index.nprobe = v
            faiss.omp_set_num_threads(2)
            ids, scores = index.search(users, K)
            faiss.omp_set_num_threads(1)
            if exact_ids is None:
                exact_ids, kth = ids, scores[:, K - 1]
            recall = float(np.mean([len(np.intersect1d(ids[i], exact_ids[i])) / K for i in range(len(users))]))
            # ties: items without interactions have attribute-only vectors, so hundreds of items
            # share one vector and "which 100 of the tied" is arbitrary; a result scoring at least
            # the exact k-th score is as good as the exact one (ann-benchmarks' threshold recall)
            tie_recall = float(np.mean((scores >= kth[:, None] - 1e-4 * np.abs(kth[:, None])).sum(1) / K))
            q1 = _qps(index, users, 1, a.qps_seconds, 2000)
            q16 = _qps(index, users, 16, a.qps_seconds, 8000)
            row = {"index": name, "knob": f"{knob}={v}" if knob else "", "items": len(items), "dim": items.shape[1],
                   "build_s": round(build, 1), "index_mb": round(memory / 2**20, 1), f"recall@{K}": round(recall, 4),
                   f"tie_recall@{K}": round(tie_recall, 4),
                   "qps_1": round(q1, 1), "qps_16": round(q16, 1)}
            rows.append(row)
            print(f"  {name:<22} {row['knob']:<14} build {build:6.1f}s  {row['index_mb']:7.1f} MB  "
                  f"recall@{K} {recall:.4f} (ties {tie_recall:.4f})  {q1:8.1f} q/s (1)  {q16:8.1f} q/s (16)", flush=True)
        del index
    exact = rows[0]
    for r in rows:
        r["speedup_1"] = round(r["qps_1"] / exact["qps_1"], 1)
        r["speedup_16"] = round(r["qps_16"] / exact["qps_16"], 1)
    return rows


TRAIN_CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
from training.models.retriever import ItemTower, TwoTower, TwoTowerTrain
from training.jobs.train_retriever import RetrieverJob, prepare_inputs
from training.models.retriever_config import RetrieverConfig
variant, data, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(1)
cfg = RetrieverConfig(dim=64, layers=1, heads=1, dropout=0.1, max_len=20, batch_size=256, lr=3e-3,
                      loss="sampled", num_negatives=1024, use_text=False, use_image=False)
inputs = prepare_inputs(RetrieverJob(data=data, out="unused", model=cfg, workers=1, valid_users=10))
feats, seqs = inputs.features, inputs.sequences
if variant == "whole table":  # the step before ItemTower.rows: every item's vector, every step
    ItemTower.rows = lambda self, ids: self.all_items()[ids]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
torch.manual_seed(0)
module = TwoTowerTrain(TwoTower(cfg, feats))
opt = torch.optim.Adam(module.parameters(), lr=cfg.lr)
x_t, y_t, lq = torch.from_numpy(seqs.inputs), torch.from_numpy(seqs.targets), torch.from_numpy(inputs.log_q)
gen = torch.Generator().manual_seed(0)
order = torch.randperm(len(x_t), generator=torch.Generator().manual_seed(0))
times = []
for s in range(steps + 3):
    rows = order[s * cfg.batch_size:(s + 1) * cfg.batch_size]
    t0 = time.perf_counter()
    loss = module(x_t[rows], y_t[rows], lq, gen)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if s >= 3:
        times.append(time.perf_counter() - t0)
print(json.dumps({"variant": variant, "items": int(feats.num_items), "sequences": len(seqs),
                  "steps": steps, "batch": cfg.batch_size, "samples_per_s": round(cfg.batch_size * steps / sum(times), 1),
                  "step_ms_p50": round(1000 * float(np.median(times)), 1),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                  "rss_before_model_mb": round(before / 1024, 1), "loss_last": float(loss)}))
"""


def phase_train(a: argparse.Namespace) -> list[dict]:
    rows = []
    for variant in ("items of the batch (ItemTower.rows)", "whole table"):
        out = subprocess.run([sys.executable, "-c", TRAIN_CHILD, variant, a.data, str(a.steps)], cwd=ROOT, check=False,
                             capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        if out.returncode != 0:
            raise SystemExit(f"train step ({variant}) failed:\n{out.stderr[-3000:]}")
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"  {variant:<38} {row['samples_per_s']:>9.1f} samples/s  step p50 {row['step_ms_p50']:>7.1f} ms  "
              f"peak {row['peak_rss_mb']:>8.1f} MB", flush=True)
    rows[0]["speedup"] = round(rows[0]["samples_per_s"] / rows[1]["samples_per_s"], 1)
    return rows


MODELS = {"retriever (100k shoppers)": "raycart-work/models/shop-1m-retriever",
          "retriever (10k shoppers)": "raycart-work/models/shop-1m-10k-retriever",
          "ranker (10k shoppers, served)": "raycart-work/models/shop-1m-10k-ranker"}


def phase_models(a: argparse.Namespace) -> list[dict]:
    rows = []
    for name, path in MODELS.items():
        metrics = json.loads((ROOT / path / "metrics.json").read_text())
        history = json.loads((ROOT / path / "history.json").read_text())
        rows.append({"model": name, "dir": path, "NDCG@10": metrics["NDCG@10"], "HR@10": metrics["HR@10"],
                     "retriever_only_NDCG@10": metrics.get("retriever_only", {}).get("NDCG@10"),
                     "run_seconds": metrics["run"]["seconds"], "history": history})
        print(f"  {name:<32} NDCG@10 {metrics['NDCG@10']:.4f}  run {metrics['run']['seconds']:.0f} s  "
              f"epochs {[round(h['seconds']) for h in history]} s", flush=True)
    return rows


REQUEST_CHILD = r"""
import asyncio, json, sys, time
import numpy as np
from serving.core.catalog import Catalog
from serving.core.schemas import AppArgs, RecommendRequest
from serving.core.local import LocalBackend, LocalState
from serving.core.service import RecommendService, user_state_config
from serving.state.memory import MemoryUserState
from training.models.retriever import ItemTower
variant, model, data, work = sys.argv[1:5]
if variant == "whole table":  # the ranker before ItemTower.rows: every item's vector per forward pass
    ItemTower.rows = lambda self, ids: self.all_items()[ids]
args = AppArgs(model_dir=model, data_dir=data, feedback_root=f"{work}/fb", wal_dir=f"{work}/wal",
               policy_state=f"{work}/policy.npz", items_root=f"{work}/items", state_dir=f"{work}/state",
               index_kind="ivf", index_nprobe=256)
catalog = Catalog.load(data)
async def append(table, records):
    pass
service = RecommendService(args, catalog, LocalBackend(args, offload=False),
                           LocalState(MemoryUserState(user_state_config(args), args.state_dir)), append)
users = list(catalog.user_index)[:31]
async def run():
    await service.recommend(RecommendRequest(user_id=users[0], k=10))  # warm-up
    times = []
    for u in users[1:]:
        t0 = time.perf_counter()
        await service.recommend(RecommendRequest(user_id=u, k=10))
        times.append(1000 * (time.perf_counter() - t0))
    return times
times = asyncio.run(run())
print(json.dumps({"variant": variant, "items": int(catalog.num_items), "requests": len(times),
                  "p50_ms": round(float(np.median(times)), 1), "p99_ms": round(float(np.percentile(times, 99)), 1)}))
"""


def phase_request(a: argparse.Namespace) -> list[dict]:
    import tempfile

    rows = []
    for variant in ("ranker embeds the batch's items", "whole table"):
        with tempfile.TemporaryDirectory(prefix="raycart-c1m-") as work:
            out = subprocess.run([sys.executable, "-c", REQUEST_CHILD, variant, a.serve_model, a.serve_data, work],
                                 cwd=ROOT, check=False, capture_output=True, text=True,
                                 env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
        if out.returncode != 0:
            raise SystemExit(f"request ({variant}) failed:\n{out.stderr[-3000:]}")
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"  {variant:<34} p50 {row['p50_ms']:>8.1f} ms  p99 {row['p99_ms']:>8.1f} ms", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="raycart-work/models/shop-1m-retriever")
    p.add_argument("--data", default="raycart-work/data/shop-1m")
    p.add_argument("--phase", default="index,train")
    p.add_argument("--queries", type=int, default=1000, help="test users whose vectors are the queries")
    p.add_argument("--qps-seconds", type=float, default=8.0, help="time budget per queries/s measurement")
    p.add_argument("--steps", type=int, default=40, help="measured training steps per variant")
    p.add_argument("--serve-model", default="raycart-work/models/shop-1m-10k-ranker", help="for --phase request")
    p.add_argument("--serve-data", default="raycart-work/data/shop-1m-10k")
    a = p.parse_args()
    doc = json.loads(OUT.read_text()) if OUT.exists() else {}
    doc["meta"] = {**doc.get("meta", {}), "date": time.strftime("%Y-%m-%d"),
                   "machine": f"{platform.machine()}, {os.cpu_count()} cores", "platform": platform.platform(),
                   "model": a.model, "data": a.data}
    for phase in a.phase.split(","):
        print(f"[catalog_1m] {phase}", flush=True)
        doc[phase] = {"index": phase_index, "train": phase_train, "models": phase_models,
                      "request": phase_request}[phase](a)
        OUT.write_text(json.dumps(doc, indent=2) + "\n")
    if "index" in doc:
        print(f"\n{'index':<22} {'setting':<14} {'build s':>8} {'MB':>7} {'recall@100':>10} {'ties':>7} {'q/s 1':>8} "
              f"{'q/s 16':>8} {'x exact':>8}")
        for r in doc["index"]:
            print(f"{r['index']:<22} {r['knob']:<14} {r['build_s']:>8.1f} {r['index_mb']:>7.1f} "
                  f"{r['recall@100']:>10.4f} {r['tie_recall@100']:>7.4f} {r['qps_1']:>8.1f} {r['qps_16']:>8.1f} {r['speedup_16']:>7.1f}x")
    if "train" in doc:
        print(f"\n{'training step':<38} {'samples/s':>10} {'peak MB':>9}")
        for r in doc["train"]:
            print(f"{r['variant']:<38} {r['samples_per_s']:>10.1f} {r['peak_rss_mb']:>9.1f}")
    print(f"\nwrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
