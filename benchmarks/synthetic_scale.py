"""Synthetic-shop scale benchmark: time to generate and write N events over M items.

Target (issue 2): 1M events and 100k items "in well under a minute" on the 2-core machine.
Runs each size with and without drawn images, prints one table, writes JSON.

    .venv/bin/python benchmarks/synthetic_scale.py
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from training.data.dataset import save_dataset
from training.data.sources.synthetic import prepare

SIZES = [(5_000, 10_000, 100_000), (50_000, 100_000, 1_000_000)]  # users, items, events


def main() -> None:
    rows = []
    for users, items, events in SIZES:
        for images in (False, True):
            out = Path(tempfile.mkdtemp(prefix="raycart-synth-")) / "shop"
            t0 = time.time()
            p = prepare(None, num_users=users, num_items=items, num_events=events, images=images)
            t1 = time.time()
            save_dataset(p.dataset, str(out), extra=p.extra)
            t2 = time.time()
            size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
            rows.append({"users": users, "items": items, "events": p.dataset.events.num_rows, "images": images,
                         "generate_s": round(t1 - t0, 2), "write_s": round(t2 - t1, 2),
                         "total_s": round(t2 - t0, 2), "bytes": size})
            shutil.rmtree(out.parent)
            print(f"  {users:,} users / {items:,} items / {events:,} events, images={images}: {t2 - t0:.1f}s",
                  flush=True)
    head = f"{'users':>8} {'items':>8} {'events':>10} {'images':>6} {'generate':>9} {'write':>7} {'total':>7} {'MB':>7}"
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        print(f"{r['users']:>8,} {r['items']:>8,} {r['events']:>10,} {str(r['images']):>6} {r['generate_s']:>8.1f}s "
              f"{r['write_s']:>6.1f}s {r['total_s']:>6.1f}s {r['bytes'] / 1e6:>7.1f}")
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
    out = Path("benchmarks/results/synthetic_scale.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
