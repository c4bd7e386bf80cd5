"""``raycart evaluate``: evaluate a model directory on a dataset split."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def add_split_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset directory (local or s3://)")
    p.add_argument("--split", default="test", choices=["valid", "test"], help="which part to evaluate")
    p.add_argument("--scheme", default="loo",
                   help="split definition: loo, time, cold, or a name from the dataset manifest")
    p.add_argument("--k", type=int, nargs="+", default=[5, 10, 20], help="cut-offs K")
    p.add_argument("--out", help="write the metrics JSON here (local or s3://)")
    p.add_argument("--progress", action="store_true", help="print progress while evaluating")


def _cmd(args: argparse.Namespace) -> int:
    from training.evaluation.metrics import EvalConfig
    from training.evaluation.run import evaluate_model_dir, format_metrics

    result = evaluate_model_dir(args.data, args.model, args.scheme, args.split, args.out,
                                EvalConfig(ks=tuple(args.k), progress=args.progress))
    log.info(f"{result['run']['model']} on {args.data} [{args.scheme}/{args.split}, "
          f"{result['users']:,} users]: {format_metrics(result)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluate a model directory (full ranking, history excluded)")
    add_split_args(p)
    p.add_argument("--model", required=True, help="model directory written by training or 'baseline --save'")
    p.set_defaults(func=_cmd)
