#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite: unit, real-data and integration tests
# (a local Ray cluster and a SeaweedFS S3 server on 127.0.0.1, started by the fixtures).
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/setup.sh
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0  # keep Ray on loopback
# lint and types first (seconds; a failure here stops the run before the 20-minute suite)
.venv/bin/ruff check .
.venv/bin/mypy training serving tuning
# the multi-node tests (node loss, GCS restart, job submission; about 10 min) are opt-in:
# pytest -m multinode tests/integration/test_multinode*.py
exec .venv/bin/python -m pytest tests --doctest-modules training -q --durations=12 -m "not multinode" "$@"
