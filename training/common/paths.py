"""Where the shared real data and pretrained weights are: ``--shared``, ``RAYCART_SHARED``, or
``../shared`` beside the project. Missing inputs fail with the path and the public source."""

from __future__ import annotations

import os
from pathlib import Path

from training.common.errors import DataError

PROJECT_ROOT = Path(__file__).resolve().parents[2]

PUBLIC_SOURCES = {
    "data/amazon": "the S3-Rec repository (aHuiWang/CIKM2020-S3Rec, data/*.txt and *_item2attributes.json)",
    "data/online-retail": "the UCI Machine Learning Repository ('Online Retail', id 352)",
    "data/hm": "the Kaggle 'H&M Personalized Fashion Recommendations' competition",
    "data/obd": "the Open Bandit Dataset (pip install obp; obd/ inside the package)",
    "models/all-MiniLM-L6-v2": "the Hugging Face hub: sentence-transformers/all-MiniLM-L6-v2",
    "models/mobilenet_v2-imagenet": "torchvision's mobilenet_v2 ImageNet weights",
}


def shared_root(explicit: str | None = None) -> Path:
    for candidate in (explicit, os.environ.get("RAYCART_SHARED"), Path.cwd() / ".." / "shared",
                      PROJECT_ROOT.parent / "shared"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate).resolve()
    where = explicit or os.environ.get("RAYCART_SHARED") or str(PROJECT_ROOT.parent / "shared")
    raise DataError(f"{where}: shared data folder not found; pass --shared DIR or set RAYCART_SHARED "
                    f"(see README: 'Real data')")


def shared_path(relative: str, explicit_root: str | None = None) -> Path:
    path = shared_root(explicit_root) / relative
    if not path.exists():
        hint = next((src for key, src in PUBLIC_SOURCES.items() if relative.startswith(key)), None)
        raise DataError(f"{path}: not found" + (f"; get it from {hint}" if hint else ""))
    return path
