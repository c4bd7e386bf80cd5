"""Shared fixtures. Real data is found at ``../shared`` (or ``RAYCART_SHARED``); when it is
missing, tests that need it are skipped locally and fail under CI (``CI=true``), so a CI run
can never pass by silently skipping the real-data checks."""

from __future__ import annotations

import os
from pathlib import Path

# Keep every Ray listener on loopback. Ray reads this when it is first imported (driver side),
# so it must be set before anything imports ray; setting it later leaves the dashboard
# process listening on 0.0.0.0 (seen with Ray 2.60).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# Ray Train's controller polls its workers every 2 s by default; the tests' runs last seconds, and
# that poll added about 5 s to each start and end (benchmarks/train_poll.py: a tiny retriever's fit
# 21.9 s -> 13.7 s at 0.25 s).
# Set before any Ray starts, so the clusters the tests start (and their CLI subprocesses) inherit it.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")

import pytest

from training.data.dataset import Dataset, save_dataset
from training.data.sources.synthetic import SyntheticConfig, generate

PROJECT = Path(__file__).resolve().parents[1]


def _shared() -> Path | None:
    for cand in (os.environ.get("RAYCART_SHARED"), PROJECT.parent / "shared"):
        if cand and Path(cand, "data").is_dir():
            return Path(cand).resolve()
    return None


@pytest.fixture(scope="session")
def shared() -> Path:
    root = _shared()
    if root is None:
        if os.environ.get("CI"):
            pytest.fail("../shared (real data) is missing on CI; set RAYCART_SHARED")
        pytest.skip("../shared (real data) not found; set RAYCART_SHARED to run real-data tests")
    return root


@pytest.fixture(scope="session")
def tiny_dataset() -> Dataset:
    ds, _ = generate(SyntheticConfig.tiny())
    return ds


@pytest.fixture(scope="session")
def tiny_dataset_dir(tmp_path_factory) -> str:
    from training.data.sources.synthetic import prepare

    out = tmp_path_factory.mktemp("data") / "tiny"
    prepared = prepare(None, **SyntheticConfig.tiny().__dict__)
    save_dataset(prepared.dataset, str(out), extra=prepared.extra)
    return str(out)
