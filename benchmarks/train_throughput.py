"""Training throughput: the Ray Train loop vs the identical loop in plain PyTorch, same run.

Samples/s of the retriever's training step (forward, full-softmax loss, backward, Adam) on the
Beauty training sequences. Plain PyTorch runs the same ``TwoTowerTrain`` module over the same
arrays in one process with one thread (what a 1-CPU Ray worker gets); Ray Train runs 1 and 2
workers (DDP over gloo, Ray Data ingest). The first epoch is warm-up and not counted.

    .venv/bin/python benchmarks/train_throughput.py [--data raycart-work/data/beauty] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from training.common.ray_env import init_ray
from training.jobs.train_retriever import RetrieverJob, prepare_inputs, train_retriever
from training.models.retriever import TwoTower, TwoTowerTrain
from training.models.retriever_config import RetrieverConfig

CONFIG = RetrieverConfig(dim=64, layers=2, heads=1, dropout=0.3, max_len=30, batch_size=256, lr=2e-3,
                         patience=1000)


def plain_pytorch(job: RetrieverJob, threads: int) -> float:
    """Samples/s of the same loop without Ray (epochs after the first)."""
    torch.set_num_threads(threads)
    inputs = prepare_inputs(job)
    torch.manual_seed(0)
    module = TwoTowerTrain(TwoTower(job.model, inputs.features))
    opt = torch.optim.Adam(module.parameters(), lr=job.model.lr)
    x, y = torch.from_numpy(inputs.sequences.inputs), torch.from_numpy(inputs.sequences.targets)
    lq = torch.from_numpy(inputs.log_q)
    rates = []
    for epoch in range(job.model.epochs):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        t0, n = time.time(), 0
        module.train()
        for i in range(0, len(x), job.model.batch_size):
            rows = order[i:i + job.model.batch_size]
            loss = module(x[rows], y[rows], lq)
            opt.zero_grad()
            loss.backward()
            opt.step()
            n += len(rows)
        rates.append(n / (time.time() - t0))
        print(f"  plain PyTorch ({threads} thread{'s' * (threads > 1)}) epoch {epoch + 1}: {rates[-1]:,.0f} samples/s",
              flush=True)
    return float(np.mean(rates[1:]))


def ray_train(job: RetrieverJob, workers: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        summary = train_retriever(replace(job, workers=workers, out=f"{tmp}/model", storage=f"{tmp}/runs"))
        history = json.loads(Path(f"{tmp}/model/history.json").read_text())
    rates = [h["samples_per_s"] for h in history[1:]]
    print(f"  Ray Train {workers} worker(s): {[round(r) for r in rates]} samples/s "
          f"(test NDCG@10 {summary['NDCG@10']:.4f})", flush=True)
    return float(np.mean(rates))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="raycart-work/data/beauty")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/train_throughput.json")
    args = ap.parse_args()
    job = RetrieverJob(data=args.data, out="", model=replace(CONFIG, epochs=args.epochs), valid_users=200)
    start = time.time()
    rows = [{"mode": "plain PyTorch", "workers": 1, "threads": 1, "samples_per_s": plain_pytorch(job, 1)}]
    rows.append({"mode": "plain PyTorch", "workers": 1, "threads": 2, "samples_per_s": plain_pytorch(job, 2)})
    init_ray(num_cpus=2)
    for workers in (1, 2):
        rows.append({"mode": "Ray Train (DDP, gloo)", "workers": workers, "threads": 1,
                     "samples_per_s": ray_train(job, workers)})
    base = rows[0]["samples_per_s"]
    for r in rows:
        r["vs_plain_1_thread"] = r["samples_per_s"] / base
    head = f"{'mode':<22} {'workers':>7} {'threads/worker':>14} {'samples/s':>10} {'vs plain 1 thread':>18}"
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        print(f"{r['mode']:<22} {r['workers']:>7} {r['threads']:>14} {r['samples_per_s']:>10,.0f} "
              f"{r['vs_plain_1_thread']:>17.3f}x")
    ray1 = rows[2]["samples_per_s"]
    print(f"\nRay Train overhead with 1 worker vs the same loop in plain PyTorch: {100 * (1 - ray1 / base):+.1f}%")
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores, CPU only",
            "config": CONFIG.to_dict(), "epochs": args.epochs, "seconds": round(time.time() - start, 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
