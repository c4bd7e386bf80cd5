"""``raycart republish``: publish the feedback-log segments that were set aside (quarantined).

A WAL segment that kept failing to publish while others published is moved to
``<wal-dir>/.quarantine/`` (:mod:`serving.feedback.log`), counted in ``/readyz`` and the
``raycart_feedback_quarantined_segments`` gauge. Once the cause is fixed (a bad line removed, a
permission restored), this command publishes each one under ``--feedback`` and removes it; a
segment that still fails stays and is listed. Safe beside running replicas (the part names are
those the writer would have used: publishing twice overwrites). No Ray.
"""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def republish(args: argparse.Namespace) -> int:
    from pathlib import Path

    from serving.feedback.log import republish_quarantined
    from training.common.errors import DataError

    if not Path(args.wal_dir).is_dir():
        raise DataError(f"--wal-dir {args.wal_dir}: no such folder (the replicas' wal_dir)")
    done = republish_quarantined(args.feedback, args.wal_dir)
    log.info(f"raycart republish: {done.segments} segment(s), {done.rows} record(s) published to {args.feedback}")
    for segment, error in done.failed:
        log.info(f"raycart republish: {segment} still fails ({error}); left in the quarantine")
    return 1 if done.failed else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("republish", help="publish the quarantined segments of a feedback log's WAL",
                       description="Publish each segment under <wal-dir>/.quarantine/ to the feedback log "
                                   "and remove it; exit 1 when one still fails.")
    p.add_argument("--feedback", default="raycart-work/feedback", help="feedback log root (local or s3://)")
    p.add_argument("--wal-dir", default="raycart-work/serve-wal", help="the replicas' write-ahead log folder")
    p.set_defaults(func=republish)
