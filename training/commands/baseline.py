"""``raycart baseline``: fit popularity or item-kNN on a split and evaluate it."""

from __future__ import annotations

import argparse
import logging

from training.commands.evaluate import add_split_args

log = logging.getLogger(__name__)


def _cmd(args: argparse.Namespace) -> int:
    from training.baselines.itemknn import ItemKNNConfig
    from training.baselines.run import run_baseline
    from training.evaluation.metrics import EvalConfig
    from training.evaluation.run import format_metrics

    given = {k: getattr(args, k) for k in ("neighbours", "shrink", "recency_decay", "max_history")
             if getattr(args, k) is not None}
    knn = ItemKNNConfig(**given)
    result = run_baseline(args.data, args.model, args.scheme, args.split, args.out, args.save,
                          args.pop_scope, knn, EvalConfig(ks=tuple(args.k), progress=args.progress))
    log.info(f"{args.model} on {args.data} [{args.scheme}/{args.split}, {result['users']:,} users, "
          f"{result['run']['seconds']:.1f}s]: {format_metrics(result)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("baseline", help="fit and evaluate a classic baseline (pop, itemknn)")
    add_split_args(p)
    p.add_argument("--model", required=True, help="pop or itemknn")
    p.add_argument("--save", help="also export the fitted baseline as a model directory")
    p.add_argument("--pop-scope", default="train", help="pop: count over 'train' (default) or 'all'")
    # defaults live in ItemKNNConfig (not imported here, so the CLI starts fast)
    p.add_argument("--neighbours", type=int, help="itemknn: neighbours kept per item")
    p.add_argument("--shrink", type=float, help="itemknn: cosine shrinkage")
    p.add_argument("--recency-decay", type=float,
                   help="itemknn: weight of the item a steps back is decay**a (1 = order-free)")
    p.add_argument("--max-history", type=int, help="itemknn: last N items (0 = all)")
    p.set_defaults(func=_cmd)
