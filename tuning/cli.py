"""``raycart tune {retriever,ranker}``: a Ray Tune sweep (see :mod:`tuning.sweep`)."""

from __future__ import annotations

import argparse
from pathlib import Path

SPACES = Path(__file__).parent / "spaces"


def _cmd(a: argparse.Namespace) -> int:
    from tuning.sweep import SweepJob, run_sweep

    opts = {"samples": a.samples, "max_concurrent": a.max_concurrent, "scheduler": a.scheduler, "search": a.search,
            "storage": a.storage, "name": a.name, "workers_per_trial": a.workers_per_trial}
    if a.smoke:
        if a.kind != "retriever":
            from training.common.errors import DataError
            raise DataError("--smoke: the smoke sweep tunes the retriever")
        job = SweepJob.tiny(a.data, a.out, a.storage, **{k: v for k, v in opts.items()
                                                          if k != "storage" and v is not None},
                            **({"space": a.space} if a.space else {}))
    else:
        job = SweepJob(kind=a.kind, data=a.data, space=a.space or str(SPACES / f"{a.kind}.yaml"), out=a.out,
                       epochs=a.epochs, grace_period=a.grace_period, reduction_factor=a.reduction_factor,
                       retriever=a.retriever, scheme=a.scheme, valid_users=a.valid_users,
                       **{**opts, "samples": 16 if a.samples is None else a.samples})
    run_sweep(job)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="hyperparameter sweep with Ray Tune (ASHA)",
                       description="Sweep the retriever or the ranker over a YAML search space; ASHA stops weak "
                                   "trials; the best trial's model directory is exported to --out.")
    from training.models.kinds import TRAINERS

    p.add_argument("kind", choices=list(TRAINERS))
    p.add_argument("--data", required=True, help="prepared dataset directory")
    p.add_argument("--space", help="search space YAML (default: tuning/spaces/KIND.yaml)")
    p.add_argument("--out", required=True, help="model directory for the best trial (local or s3://)")
    p.add_argument("--samples", type=int, help="trials (default 16; --smoke: 4)")
    p.add_argument("--max-concurrent", type=int, default=2, help="trials at a time")
    p.add_argument("--scheduler", default="asha", choices=["asha", "fifo"])
    p.add_argument("--search", default="random", choices=["random", "optuna"],
                   help="how trials are picked: random sampling, or Optuna's TPE from the results so far "
                        "(needs pip install 'raycart[tune-optuna]')")
    p.add_argument("--storage", default="raycart-work/tune", help="sweep storage (local or s3://bucket/prefix)")
    p.add_argument("--name", help="sweep name (default: derived from the job; the same job resumes)")
    p.add_argument("--epochs", type=int, default=8, help="epochs per trial (ASHA max_t)")
    p.add_argument("--grace-period", type=int, default=1)
    p.add_argument("--reduction-factor", type=int, default=2)
    p.add_argument("--workers-per-trial", type=int, default=1, help="Ray Train workers per trial")
    p.add_argument("--retriever", help="ranker sweeps: the retriever model directory")
    p.add_argument("--scheme", default="loo")
    p.add_argument("--valid-users", type=int, default=0, help="retriever: validation users per epoch (0 = all)")
    p.add_argument("--smoke", action="store_true", help="tiny retriever trials (tests): 4 unless --samples")
    p.set_defaults(func=_cmd)
