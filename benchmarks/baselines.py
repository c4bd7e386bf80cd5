"""Baseline benchmark: popularity and item-kNN on Beauty, Sports and Online Retail.

Prepares the real datasets (cached under --workdir), fits each baseline on the training part of
each split, evaluates on the test part (full ranking, history excluded), and prints one table,
writes JSON and a bar plot of NDCG@10. Every row records the CLI command that reproduces it.

    .venv/bin/python benchmarks/baselines.py [--datasets beauty,sports,online-retail]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from training.baselines.itemknn import ItemKNNConfig
from training.baselines.run import run_baseline
from training.data.known import DATASETS, KnownData, prepare_cached
from training.evaluation.metrics import EvalConfig

# (label, model, options): popularity two ways, item-kNN with defaults (order-free), and
# item-kNN tuned on the validation split over GRID (shrinkage x recency decay).
VARIANTS = [
    ("pop", "pop", {"pop_scope": "train"}),
    ("pop (all, paper)", "pop", {"pop_scope": "all"}),
    ("itemknn", "itemknn", {"knn": ItemKNNConfig()}),
    ("itemknn-tuned", "itemknn", None),
]
GRID = [ItemKNNConfig(shrink=s, recency_decay=d) for s in (10.0, 50.0) for d in (1.0, 0.7, 0.4)]


def tune_itemknn(data: str, scheme: str) -> tuple[ItemKNNConfig, list[dict]]:
    """Pick the GRID config with the best validation NDCG@10 (the test part is not looked at)."""
    trials = []
    for knn in GRID:
        r = run_baseline(data, "itemknn", scheme, "valid", knn=knn, eval_config=EvalConfig(ks=(10,)))
        trials.append({"shrink": knn.shrink, "recency_decay": knn.recency_decay, "valid_NDCG@10": r["NDCG@10"]})
        print(f"    valid: shrink {knn.shrink:g}, decay {knn.recency_decay:g} -> NDCG@10 {r['NDCG@10']:.4f}",
              flush=True)
    best = max(range(len(GRID)), key=lambda i: trials[i]["valid_NDCG@10"])
    return GRID[best], trials


def command(data: str, model: str, scheme: str, opts: dict) -> str:
    cmd = f"raycart baseline --data {data} --model {model} --scheme {scheme} --split test"
    if model == "pop" and opts.get("pop_scope") == "all":
        cmd += " --pop-scope all"
    knn = opts.get("knn")
    if knn is not None and knn != ItemKNNConfig():
        cmd += f" --shrink {knn.shrink:g} --recency-decay {knn.recency_decay:g}"
    return cmd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="beauty,sports,online-retail")
    ap.add_argument("--workdir", default="raycart-work")
    ap.add_argument("--out", default="benchmarks/results/baselines.json")
    args = ap.parse_args()
    cfg = KnownData(workdir=args.workdir)
    rows = []
    start = time.time()
    for name in args.datasets.split(","):
        data = prepare_cached(name, cfg)
        for scheme in DATASETS[name][2]:
            for label, model, opts in VARIANTS:
                if label.startswith("pop (all") and scheme != "loo":
                    continue
                print(f"[{name}/{scheme}] {label} ...", flush=True)
                extra = {}
                if opts is None:
                    tune_start = time.time()
                    knn, trials = tune_itemknn(data, scheme)
                    opts = {"knn": knn}
                    extra = {"tuning": trials, "tuning_s": round(time.time() - tune_start, 1)}
                r = run_baseline(data, model, scheme, "test", **opts)
                rows.append({"dataset": name, "scheme": scheme, "model": label, **extra,
                             "command": command(data, model, scheme, opts),
                             **{k: v for k, v in r.items() if k != "run"},
                             "fit_s": r["run"]["fit_seconds"], "total_s": r["run"]["seconds"]})
    head = (f"{'dataset':<14} {'split':<5} {'model':<17} {'users':>7} {'HR@10':>7} {'NDCG@10':>8} "
            f"{'HR@20':>7} {'NDCG@20':>8} {'MRR':>7} {'Cov@10':>7} {'time':>7}")
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        print(f"{r['dataset']:<14} {r['scheme']:<5} {r['model']:<17} {r['users']:>7,} {r['HR@10']:>7.4f} "
              f"{r['NDCG@10']:>8.4f} {r['HR@20']:>7.4f} {r['NDCG@20']:>8.4f} {r['MRR']:>7.4f} "
              f"{r['Coverage@10']:>7.4f} {r['total_s']:>6.1f}s")
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
            f"{platform.python_version()}", "seconds": round(time.time() - start, 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    _plot(rows, Path(args.out).with_suffix(".png"))
    print(f"\nwrote {args.out} and {Path(args.out).with_suffix('.png')} ({meta['seconds']:.0f}s)")


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["dataset"], r["scheme"]) for r in rows}, key=lambda g: [x for x in g])
    labels = [v[0] for v in VARIANTS]
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(labels)
    for j, label in enumerate(labels):
        vals = [next((r["NDCG@10"] for r in rows if (r["dataset"], r["scheme"]) == g and r["model"] == label), 0)
                for g in groups]
        ax.bar([i + j * width for i in range(len(groups))], vals, width, label=label)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))], [f"{d}\n{s}" for d, s in groups])
    ax.set_ylabel("NDCG@10 (test, full ranking)")
    ax.set_title("Raycart baselines")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
