"""Retriever modality ablation and the cold-item test on the synthetic shop.

Trains the retriever (Ray Train, 2 workers) with ids only, + attributes, + text, + image, on
the leave-one-out split and on the cold-item split (test items never seen in training, ranked
among the cold items), next to popularity and item-kNN on the same splits. Text embeddings come
from all-MiniLM-L6-v2 and image embeddings from MobileNetV2 (ImageNet), both by Ray Data batch
inference over the shop's titles/descriptions and drawn images.

    .venv/bin/python benchmarks/retriever_ablation.py [--shared ../shared]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

from training.baselines.run import run_baseline
from training.common.paths import shared_path
from training.common.ray_env import init_ray
from training.data.prepare import prepare
from training.jobs.train_retriever import RetrieverJob, train_retriever
from training.models.encoders import ImageEncoderConfig, TextEncoderConfig
from training.models.retriever_config import RetrieverConfig

VARIANTS = [
    # ids alone learn far more slowly (every item is its own parameter; one sequence per user is
    # ~23 steps per epoch here): their validation NDCG@10 stays flat for ~40 epochs and then takes
    # off, so they get a longer budget and patience instead of being stopped on the plateau
    ("ids only", dict(use_attributes=False, use_text=False, use_image=False, epochs=150, patience=30)),
    ("+ attributes", dict(use_text=False, use_image=False)),
    ("+ text", dict(use_image=False)),
    ("+ image (all)", dict()),
    ("content only (no ids)", dict(use_id=False)),
]
CONFIG = RetrieverConfig(dim=64, layers=1, heads=1, dropout=0.2, max_len=20, batch_size=128, lr=2e-3,
                         epochs=30, patience=8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared")
    ap.add_argument("--workdir", default="raycart-work")
    ap.add_argument("--out", default="benchmarks/results/retriever_ablation.json")
    ap.add_argument("--variants", nargs="*", help="rerun only these variants (labels as in the table) and "
                                                   "replace their rows in --out")
    args = ap.parse_args()
    text = TextEncoderConfig(str(shared_path("models/all-MiniLM-L6-v2", args.shared)))
    image = ImageEncoderConfig(weights=str(shared_path("models/mobilenet_v2-imagenet", args.shared)))
    data = f"{args.workdir}/data/synthetic-ablation"
    if not Path(data, "dataset.json").exists():
        prepare("synthetic", None, data, num_users=3000, num_items=1500, num_events=90_000, image_size=64)
    init_ray(num_cpus=2)
    rows, start = [], time.time()
    variants = [v for v in VARIANTS if not args.variants or v[0] in args.variants]
    for scheme in ("loo", "cold"):
        for model in ("pop", "itemknn") if not args.variants else ():
            r = run_baseline(data, model, scheme, "test")
            rows.append({"scheme": scheme, "model": model, **{k: v for k, v in r.items() if k != "run"}})
            print(f"[{scheme}] {model}: NDCG@10 {r['NDCG@10']:.4f} HR@10 {r['HR@10']:.4f}", flush=True)
        for label, switches in variants:
            cfg = replace(CONFIG, **switches)
            job = RetrieverJob(data=data, out=f"{args.workdir}/models/ablation-{scheme}-{label.replace(' ', '_')}",
                               model=cfg, scheme=scheme, workers=2, text=text, image=image,
                               storage=f"{args.workdir}/ray-results", cache_dir=f"{args.workdir}/cache")
            t0 = time.time()
            r = train_retriever(job)
            rows.append({"scheme": scheme, "model": f"retriever {label}", "seconds": round(time.time() - t0, 1),
                         "epochs": r["run"]["epochs"], **{k: v for k, v in r.items() if k != "run"}})
            print(f"[{scheme}] retriever {label}: NDCG@10 {r['NDCG@10']:.4f} HR@10 {r['HR@10']:.4f}", flush=True)
    if args.variants and Path(args.out).exists():  # merge: keep the other rows of the last full run
        fresh = {(r["scheme"], r["model"]) for r in rows}
        old = json.loads(Path(args.out).read_text())["rows"]
        rows = [r for r in old if (r["scheme"], r["model"]) not in fresh] + rows
    head = f"{'split':<5} {'model':<32} {'HR@10':>7} {'NDCG@10':>8} {'MRR':>7} {'Cov@10':>7}"
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        print(f"{r['scheme']:<5} {r['model']:<32} {r['HR@10']:>7.4f} {r['NDCG@10']:>8.4f} {r['MRR']:>7.4f} "
              f"{r['Coverage@10']:>7.4f}")
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "config": CONFIG.to_dict(), "seconds": round(time.time() - start, 1), "rerun_variants": args.variants}
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out} ({meta['seconds']:.0f}s)")


if __name__ == "__main__":
    main()
