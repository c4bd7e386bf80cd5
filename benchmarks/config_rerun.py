"""Summarise benchmarks/config_rerun.sh: the test metrics of the four models it trained next to the
rows BENCHMARKS.md had before the refactor; a table, and benchmarks/results/config_rerun.json."""

from __future__ import annotations

import json
import time
from pathlib import Path

W = Path("raycart-work")
# BENCHMARKS.md before issue 16 (same data, split and configuration)
BEFORE = {"or-retriever": {"NDCG@10": 0.0309, "HR@10": 0.1886, "row": "Online Retail basket, retriever run 2"},
          "or-ranker": {"NDCG@10": 0.0725, "HR@10": 0.3338, "row": "Online Retail basket, two-stage"},
          "beauty-retriever": {"NDCG@10": 0.0589, "HR@10": None, "row": "Beauty loo, best sweep trial (12 epochs)"},
          "beauty-ranker": {"NDCG@10": 0.0640, "HR@10": 0.1092, "row": "Beauty loo, two-stage (over the 60-epoch retriever)"},
          # `config_rerun.sh beauty-1w`: the sweep's trial setting (1 worker, batch 128)
          "beauty1w-retriever": {"NDCG@10": 0.0589, "HR@10": 0.1005,
                                 "row": "Beauty loo, best sweep trial, 1 worker batch 128 as in the sweep"},
          "beauty1w-ranker": {"NDCG@10": 0.0640, "HR@10": 0.1092,
                              "row": "Beauty loo, two-stage over it (before: over the 60-epoch retriever)"}}


def main() -> None:
    times = dict(line.split() for line in (W / "logs" / "rerun-times.txt").read_text().splitlines())  # last wins
    rows = []
    for name, before in BEFORE.items():
        optional = name.startswith("beauty1w")  # `config_rerun.sh beauty-1w`
        path = W / "models" / f"rerun-{name}" / "model.json"
        if optional and not path.exists():
            continue
        card = json.loads(path.read_text())
        # the ranker card's attribute vocabulary is the dataset's (thousands of names): left out
        config = {k: v for k, v in card["config"].items() if k != "attribute_vocab"}
        m = card["metrics"]
        rows.append({"model": name, "row": before["row"], "NDCG@10": m["NDCG@10"], "HR@10": m["HR@10"],
                     "before_NDCG@10": before["NDCG@10"], "before_HR@10": before["HR@10"],
                     "epochs": len(card["history"]), "seconds": int(times.get(name, 0)),
                     "format_version": card["format_version"], "config": config,
                     "command": "bash benchmarks/config_rerun.sh" + (" beauty-1w" if optional else "")})
    print(f"{'model':<18} {'NDCG@10':>8} {'before':>8} {'HR@10':>7} {'epochs':>6} {'time':>6}")
    for r in rows:
        print(f"{r['model']:<18} {r['NDCG@10']:>8.4f} {r['before_NDCG@10']:>8.4f} {r['HR@10']:>7.4f} "
              f"{r['epochs']:>6} {r['seconds']:>5}s")
    out = Path("benchmarks/results/config_rerun.json")
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": "2-core x86_64, 24 GiB, no GPU",
                               "command": "bash benchmarks/config_rerun.sh", "rows": rows}, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
