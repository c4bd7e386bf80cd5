"""Preparing a dataset: a source's raw files converted into the canonical dataset
(:mod:`training.data.dataset`), used by ``raycart data prepare`` and by code that prepares its own
data (the demo, tests, benchmarks)."""

from __future__ import annotations

import logging
import time

from training.common.errors import DataError
from training.data.dataset import save_dataset
from training.data.sources import get_source

log = logging.getLogger(__name__)


def prepare(source: str, input: str | None, output: str, overwrite: bool = False, **options) -> dict:
    """Convert ``input`` from ``source`` into a canonical dataset at ``output``; returns the
    manifest. Nothing is left at ``output`` if anything fails."""
    fn = get_source(source)
    if source != "synthetic" and not input:
        raise DataError(f"--input is required for source '{source}'")
    start = time.time()
    log.info(f"preparing {source} dataset" + (f" from {input}" if input else "") + f" -> {output}")
    prepared = fn(input, **options)
    for line in prepared.report:
        log.info(f"  {line}")
    manifest = save_dataset(prepared.dataset, output, overwrite=overwrite, extra=prepared.extra)
    counts = ", ".join(f"{k}={v:,}" for k, v in manifest["counts"].items())
    log.info(f"wrote {output} ({counts}) in {time.time() - start:.1f}s")
    return manifest
