"""The ranker's text encoder: frozen vs last layer fine-tuned vs LoRA, on data with item text.

For each dataset (the synthetic shop, whose titles/descriptions carry the planted category and
colour, and Online Retail, whose items have only short product titles) one retriever is trained
(Ray Train, frozen all-MiniLM-L6-v2 text features), then the ranker three times over the same
candidates, with the same budget (epochs, data, candidate lists, seed; no early stopping):

* ``frozen``: the MiniLM text features only (``text_tune_layers 0``);
* ``last layer``: MiniLM's last layer fine-tuned whole (``--text-tune-layers 1``);
* ``LoRA``: peft LoRA adapters (rank ``--lora-rank``) on the attention query/value of MiniLM's
  last ``--lora-layers`` layers, everything else of the encoder frozen
  (``--text-tune-mode lora --text-tune-layers N``).

Reported: test NDCG@10 / HR@10 of the two-stage pipeline (leave-one-out on the shop, the basket
split on Online Retail), trainable parameters (all, and of the text encoder), training seconds per
epoch. Small configurations on purpose: the whole run is meant to fit in ~25 CPU minutes on 2 cores.

    .venv/bin/python benchmarks/text_tuning.py [--shared ../shared] [--epochs 3] [--lora-layers 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from training.common.paths import shared_path
from training.common.ray_env import init_ray
from training.data.prepare import prepare
from training.jobs.ranker_data import RankerJob
from training.jobs.train_ranker import train_ranker
from training.jobs.train_retriever import RetrieverJob, train_retriever
from training.models.encoders import TextEncoderConfig
from training.models.ranker_config import RankerConfig
from training.models.retriever_config import RetrieverConfig

RETRIEVER = RetrieverConfig(dim=32, layers=1, heads=1, dropout=0.2, max_len=20, use_image=False, lr=2e-3,
                            batch_size=128, epochs=8, patience=8)
RANKER = RankerConfig(dim=32, hidden=64, dropout=0.1, max_len=20, use_image=False, train_candidates=10,
                      eval_candidates=50, batch_size=32, lr=1e-3, epochs=3, patience=3)


def datasets(work: Path, shared: str | None) -> dict:
    """name -> (dataset dir, split scheme, retriever config)."""
    out = {}
    shop = work / "data" / "shop-2500"
    if not (shop / "dataset.json").exists():
        prepare("synthetic", None, str(shop), num_users=2500, num_items=500, num_events=75_000, images=False)
    out["synthetic shop"] = (str(shop), "loo", RETRIEVER)
    retail = work / "data" / "online-retail"
    if not (retail / "dataset.json").exists():
        prepare("online-retail", str(shared_path("data/online-retail/online_retail.csv.gz", shared)), str(retail))
    out["Online Retail"] = (str(retail), "basket", replace(RETRIEVER, target="basket", windows=2))
    return out


def modes(lora_rank: int, lora_layers: int) -> dict:
    return {"frozen": {},
            "last layer": {"text_tune_layers": 1, "text_tune_mode": "layers"},
            f"LoRA r={lora_rank} ({lora_layers} layer{'s' if lora_layers > 1 else ''})":
                {"text_tune_layers": lora_layers, "text_tune_mode": "lora", "text_lora_rank": lora_rank,
                 "text_lora_alpha": 2.0 * lora_rank}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared")
    ap.add_argument("--workdir", default="raycart-work/text-tuning")
    ap.add_argument("--out", default="benchmarks/results/text_tuning.json")
    ap.add_argument("--epochs", type=int, default=3, help="ranker epochs, the same for every mode")
    ap.add_argument("--lora-rank", type=int, default=8)
    ap.add_argument("--lora-layers", type=int, default=1, help="MiniLM layers (from the top) that get adapters; 6 = all")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="the rankers' seed (a control for what initialisation moves)")
    ap.add_argument("--modes", nargs="*", help="only these modes (frozen, last, lora); none: only tidy --out")
    ap.add_argument("--datasets", nargs="*", help="rerun only these (names as in the table) and replace their "
                                                  "rows in --out")
    args = ap.parse_args()
    work = Path(args.workdir)
    text = TextEncoderConfig(str(shared_path("models/all-MiniLM-L6-v2", args.shared)))
    init_ray(num_cpus=2)
    start, rows = time.time(), []
    for name, (data, scheme, rcfg) in datasets(work, args.shared).items():
        if args.datasets and name not in args.datasets:
            continue
        slug = Path(data).name
        retriever = str(work / "models" / f"{slug}-retriever")
        if not Path(retriever, "model.json").exists():
            train_retriever(RetrieverJob(data=data, out=retriever, model=rcfg, scheme=scheme, workers=args.workers,
                                         storage=str((work / "runs").resolve()), text=text,
                                         cache_dir=str(work / "cache")))
        for mode, over in modes(args.lora_rank, args.lora_layers).items():
            key = mode.split()[0].lower()
            if args.modes and key not in args.modes:
                continue
            model = replace(RANKER, epochs=args.epochs, patience=args.epochs, seed=args.seed, **over)
            out = work / "models" / f"{slug}-ranker-{key}{f'-seed{args.seed}' if args.seed else ''}"
            t0 = time.time()
            summary = train_ranker(RankerJob(
                data=data, retriever=retriever, out=str(out),
                model=model, scheme=scheme, workers=args.workers, storage=str((work / "runs").resolve()),
                text=text if model.text_tune_layers else None))
            run = summary["run"]
            history = json.loads((out / "history.json").read_text())
            rows.append({"dataset": name, "scheme": scheme, "mode": mode, "seed": args.seed, "NDCG@10": summary["NDCG@10"],
                         "HR@10": summary["HR@10"], "retriever_NDCG@10": summary["retriever_only"]["NDCG@10"],
                         "retriever_HR@10": summary["retriever_only"]["HR@10"],
                         "best_valid_NDCG@10": run["best_valid_NDCG@10"], "epochs": run["epochs"],
                         "trainable_params": run["trainable_params"]["total"],
                         "text_encoder_trainable_params": run["trainable_params"]["text_encoder"],
                         "train_seconds_per_epoch": sum(h["train_seconds"] for h in history) / len(history),
                         "valid_curve": [h["valid_NDCG@10"] for h in history],
                         "run_seconds": round(time.time() - t0, 1), "config": model.to_dict()})
            _print(rows)
    result = {"benchmark": "text_tuning", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU", "seconds": round(time.time() - start, 1),
              "command": "python benchmarks/text_tuning.py " + " ".join(
                  f"--{k.replace('_', '-')} " + (" ".join(f"'{x}'" for x in v) if isinstance(v, list) else str(v))
                  for k, v in vars(args).items() if v is not None and k != "shared"),
              "retriever": RETRIEVER.to_dict(), "rows": rows}
    if (args.datasets or args.modes or args.seed) and Path(args.out).exists():  # a partial rerun replaces its rows
        ran = {(r["dataset"], r["mode"], r["seed"]) for r in rows}
        before = json.loads(Path(args.out).read_text())
        for r in before["rows"]:  # rows written before --seed existed: their config says
            r["seed"] = r["config"]["seed"] if r.get("seed") is None else r["seed"]
        kept = [r for r in before["rows"] if (r["dataset"], r["mode"], r["seed"]) not in ran]
        result["rows"] = rows = kept + rows
        result["runs"] = before.get("runs", [{k: before[k] for k in ("command", "date", "seconds")}])
    result.setdefault("runs", []).append({k: result[k] for k in ("command", "date", "seconds")})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    _print(rows)
    print(f"\n{result['seconds'] / 60:.1f} min in all -> {args.out}")


def _print(rows: list[dict]) -> None:
    print("\n| data | text encoder | seed | NDCG@10 | HR@10 | trainable (text encoder) | train s/epoch | epochs |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['dataset']} | {r['mode']} | {r.get('seed', 0)} | {r['NDCG@10']:.4f} | {r['HR@10']:.4f} | "
              f"{r['trainable_params']:,} ({r['text_encoder_trainable_params']:,}) | "
              f"{r['train_seconds_per_epoch']:.1f} | {r['epochs']} |", flush=True)


if __name__ == "__main__":
    main()
