"""The real datasets Raycart knows (under ``../shared``), their cached preparation in a work
directory, and the metrics table the demo and the baseline benchmark print."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import logging
from dataclasses import dataclass
from pathlib import Path

from training import __version__
from training.common.paths import shared_path
from training.data.sources import SOURCES

log = logging.getLogger(__name__)

# name -> (source, input under shared/, schemes evaluated)
DATASETS = {
    "beauty": ("amazon", "data/amazon/Beauty.txt", ("loo",)),
    "sports": ("amazon", "data/amazon/Sports_and_Outdoors.txt", ("loo",)),
    "online-retail": ("online-retail", "data/online-retail/online_retail.csv.gz", ("loo", "basket", "time")),
}


@dataclass(frozen=True)
class KnownData:
    """Where prepared copies go (``workdir``), where the inputs are (``shared``), which to use."""

    workdir: str = "raycart-work"
    shared: str | None = None
    datasets: tuple[str, ...] = ("beauty", "online-retail")
    models: tuple[str, ...] = ("pop", "itemknn")


def prepare_cached(name: str, cfg: KnownData) -> str:
    """Prepare dataset ``name`` unless the work directory already holds it for the same input."""
    from training.data.prepare import prepare

    source, rel, _ = DATASETS[name]
    src = shared_path(rel, cfg.shared)
    out = Path(cfg.workdir) / "data" / name
    stamp = Path(cfg.workdir) / "data" / f".{name}.stamp"
    converter = Path(inspect.getfile(importlib.import_module(SOURCES[source])))
    key = (f"{source} {src} {src.stat().st_size} {src.stat().st_mtime_ns} raycart {__version__} "
           f"{hashlib.sha256(converter.read_bytes()).hexdigest()[:16]}")
    if (out / "dataset.json").exists() and stamp.exists() and stamp.read_text() == key:
        log.info(f"[{name}] using prepared dataset {out}")
        return str(out)
    log.info(f"[{name}] preparing from {src}")
    prepare(source, str(src), str(out), overwrite=True)
    stamp.write_text(key)
    return str(out)


def format_table(rows: list[dict]) -> str:
    head = f"{'dataset':<14} {'split':<6} {'model':<8} {'users':>7} {'HR@10':>7} {'NDCG@10':>8} " \
           f"{'HR@20':>7} {'NDCG@20':>8} {'MRR':>7} {'Cov@10':>7} {'time':>6}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['dataset']:<14} {r['scheme']:<6} {r['model']:<8} {r['users']:>7,} "
                     f"{r['HR@10']:>7.4f} {r['NDCG@10']:>8.4f} {r['HR@20']:>7.4f} {r['NDCG@20']:>8.4f} "
                     f"{r['MRR']:>7.4f} {r['Coverage@10']:>7.4f} {r['run']['seconds']:>5.1f}s")
    return "\n".join(lines)
