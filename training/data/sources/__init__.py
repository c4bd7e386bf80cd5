"""Converters from public datasets and shop exports to the canonical Raycart dataset.

Each converter is ``prepare(input, **options) -> Prepared``; the registry below maps the
``--source`` names of ``raycart data prepare`` to them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from training.common.errors import DataError
from training.data.dataset import Dataset


@dataclass
class Prepared:
    dataset: Dataset
    extra: Callable[[Path], None] | None = None  # writes extra files (images) into the output
    report: list[str] = field(default_factory=list)  # cleaning steps, printed by the CLI


SOURCES = {
    "online-retail": "training.data.sources.online_retail",
    "amazon": "training.data.sources.amazon",
    "hm": "training.data.sources.hm",
    "obd": "training.data.sources.obd",
    "generic": "training.data.sources.generic",
    "synthetic": "training.data.sources.synthetic",
}


def get_source(name: str):
    """The ``prepare`` function of source ``name``."""
    if name not in SOURCES:
        raise DataError(f"unknown source '{name}' (expected one of: {', '.join(SOURCES)})")
    return importlib.import_module(SOURCES[name]).prepare
