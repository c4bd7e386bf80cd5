"""``raycart retrain``: the retrain job of :mod:`serving.jobs.retrain` from the command line (Ray
started here, the job's lines on the console)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def _cmd(a: argparse.Namespace) -> int:
    from serving.jobs.retrain import RetrainJob, retrain
    from training.common.ray_env import init_ray

    init_ray()
    retrain(RetrainJob(feedback=a.feedback, data=a.data, model=a.model, work=a.work, epochs=a.epochs,
                       workers=a.workers, ndcg_tolerance=a.ndcg_tolerance, epsilon=a.epsilon, app_args=a.app_args,
                       exposure=a.exposure, recent_weight=a.recent_weight, replay=a.replay,
                       warmup_steps=a.warmup_steps, lr_scale=a.lr_scale))
    return 0


def _checked(convert: Callable[[str], Any], ok: Callable[[Any], bool], rule: str) -> Callable[[str], Any]:
    """An argparse type: ``convert`` the text (an error if it cannot), then require ``ok`` of the value."""
    kind = "a whole number" if convert is int else "a number"

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {value}")
        return value
    return parse


_tolerance = _checked(float, lambda v: 0 <= v < 1, "in [0, 1)")
_positive = _checked(float, lambda v: v > 0, "> 0")
_fraction = _checked(float, lambda v: 0 < v <= 1, "in (0, 1]")
_count = _checked(int, lambda v: v >= 0, ">= 0")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("retrain", help="retrain the ranker from the feedback log behind a gate",
                       description="Merge the feedback log into the dataset, retrain the serving ranker "
                                   "(warm start, Ray Train), gate it on a paired test of holdout NDCG@10 and off-policy "
                                   "evaluation of the logged traffic, and promote it or keep the old one.")
    p.add_argument("--feedback", required=True, help="feedback log root (local or s3://)")
    p.add_argument("--data", required=True, help="the dataset the serving model was trained on")
    p.add_argument("--model", required=True, help="the serving ranker directory")
    p.add_argument("--work", default="raycart-work/retrain", help="merged data, runs, candidates, decisions")
    p.add_argument("--epochs", type=int, help="epochs of the retrain (default: the serving model's)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--ndcg-tolerance", type=_tolerance, default=0.002,
                   help="the gate: the paired bootstrap 95%% interval of holdout NDCG@10 (candidate - serving) "
                        "must have its lower bound >= -this (default 0.002)")
    p.add_argument("--epsilon", type=float, default=0.05, help="the serving policy's exploration")
    p.add_argument("--app-args", help="promote into the running app with these AppArgs (YAML/JSON)")
    p.add_argument("--no-exposure", dest="exposure", action="store_false",
                   help="do not train on the shown slates (engaged vs shown-and-skipped, position-weighted)")
    p.add_argument("--recent-weight", type=_positive, default=1.0,
                   help="weight of the training lists whose target is in the log, and of the shown slates "
                        "(recency weighting; default 1: as the older lists)")
    p.add_argument("--replay", type=_fraction, default=1.0,
                   help="fraction of the older training lists kept beside the new ones (replay against "
                        "forgetting; default 1: all)")
    p.add_argument("--warmup-steps", type=_count, default=0,
                   help="the learning rate ramps up over this many optimiser steps (default 0: none)")
    p.add_argument("--lr-scale", type=_positive, default=1.0,
                   help="the retrain's learning rate as a multiple of the serving model's (default 1)")
    p.set_defaults(func=_cmd)
