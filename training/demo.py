"""``raycart demo``: the main job end to end on real data.

Today: prepare real datasets (cached in the work directory), fit and evaluate the baselines
on them, print the metrics table and write it as JSON. Later stages (train, serve, answer
requests) extend this same command.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import inspect
import time
from dataclasses import dataclass
from pathlib import Path

from training import __version__
from training.data.sources import SOURCES
from training.paths import shared_path

# name -> (source, input under shared/, schemes evaluated)
DATASETS = {
    "beauty": ("amazon", "data/amazon/Beauty.txt", ("loo",)),
    "sports": ("amazon", "data/amazon/Sports_and_Outdoors.txt", ("loo",)),
    "online-retail": ("online-retail", "data/online-retail/online_retail.csv.gz", ("loo", "basket", "time")),
}


@dataclass(frozen=True)
class DemoConfig:
    workdir: str = "raycart-work"
    shared: str | None = None
    datasets: tuple[str, ...] = ("beauty", "online-retail")
    models: tuple[str, ...] = ("pop", "itemknn")


def prepare_cached(name: str, cfg: DemoConfig) -> str:
    """Prepare dataset ``name`` unless the work directory already holds it for the same input."""
    from training.data.cli import prepare

    source, rel, _ = DATASETS[name]
    src = shared_path(rel, cfg.shared)
    out = Path(cfg.workdir) / "data" / name
    stamp = Path(cfg.workdir) / "data" / f".{name}.stamp"
    converter = Path(inspect.getfile(importlib.import_module(SOURCES[source])))
    key = (f"{source} {src} {src.stat().st_size} {src.stat().st_mtime_ns} raycart {__version__} "
           f"{hashlib.sha256(converter.read_bytes()).hexdigest()[:16]}")
    if (out / "dataset.json").exists() and stamp.exists() and stamp.read_text() == key:
        print(f"[{name}] using prepared dataset {out}", flush=True)
        return str(out)
    print(f"[{name}] preparing from {src}", flush=True)
    prepare(source, str(src), str(out), overwrite=True)
    stamp.write_text(key)
    return str(out)


def run_demo(cfg: DemoConfig) -> list[dict]:
    from training.evaluation.run import run_baseline, write_json

    unknown = [d for d in cfg.datasets if d not in DATASETS]
    if unknown:
        from training.errors import DataError
        raise DataError(f"--datasets: unknown {unknown} (choose from {', '.join(DATASETS)})")
    start = time.time()
    rows = []
    for name in cfg.datasets:
        data = prepare_cached(name, cfg)
        for scheme in DATASETS[name][2]:
            for model in cfg.models:
                print(f"[{name}] {model} on {scheme}/test ...", flush=True)
                result = run_baseline(data, model, scheme, "test")
                rows.append({"dataset": name, "scheme": scheme, "model": model, **result})
    print()
    print(format_table(rows))
    out = Path(cfg.workdir) / "demo-metrics.json"
    write_json({"rows": rows, "seconds": round(time.time() - start, 1)}, str(out))
    print(f"\nmetrics written to {out} ({time.time() - start:.0f}s in all)")
    return rows


def format_table(rows: list[dict]) -> str:
    head = f"{'dataset':<14} {'split':<6} {'model':<8} {'users':>7} {'HR@10':>7} {'NDCG@10':>8} " \
           f"{'HR@20':>7} {'NDCG@20':>8} {'MRR':>7} {'Cov@10':>7} {'time':>6}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['dataset']:<14} {r['scheme']:<6} {r['model']:<8} {r['users']:>7,} "
                     f"{r['HR@10']:>7.4f} {r['NDCG@10']:>8.4f} {r['HR@20']:>7.4f} {r['NDCG@20']:>8.4f} "
                     f"{r['MRR']:>7.4f} {r['Coverage@10']:>7.4f} {r['run']['seconds']:>5.1f}s")
    return "\n".join(lines)


def _cmd(args: argparse.Namespace) -> int:
    run_demo(DemoConfig(workdir=args.workdir, shared=args.shared,
                        datasets=tuple(args.datasets.split(","))))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the main job on real data (prepare, baselines, metrics table)")
    p.add_argument("--workdir", default="raycart-work", help="where prepared data and results go")
    p.add_argument("--shared", help="the shared data folder (default: RAYCART_SHARED or ../shared)")
    p.add_argument("--datasets", default="beauty,online-retail",
                   help=f"comma-separated, from: {', '.join(DATASETS)}")
    p.set_defaults(func=_cmd)
