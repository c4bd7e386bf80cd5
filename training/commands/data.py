"""``raycart data prepare`` and ``raycart data info``."""

from __future__ import annotations

import argparse
import json
import logging

from training.data.dataset import read_manifest
from training.data.prepare import prepare
from training.data.sources import SOURCES

log = logging.getLogger(__name__)


def _options(args: argparse.Namespace) -> dict:
    src = args.source
    if src == "amazon":
        return {"attributes": args.attributes} if args.attributes else {}
    if src == "generic":
        return {"items": args.items, "string_ids": args.string_ids,
                "default_event_type": args.default_event_type}
    if src == "obd":
        return {"campaign": args.campaign}
    if src == "synthetic":
        out = {"seed": args.seed, "images": not args.no_images}
        for name in ("num_users", "num_items", "num_events", "image_size", "taste_strength"):
            if getattr(args, name) is not None:
                out[name] = getattr(args, name)
        return out
    return {}


def _cmd_prepare(args: argparse.Namespace) -> int:
    prepare(args.source, args.input, args.output, overwrite=args.overwrite, **_options(args))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    print(json.dumps(read_manifest(args.data), indent=2))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="prepare and inspect datasets")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    p = dsub.add_parser("prepare", help="convert a source dataset to the canonical Raycart format",
                        description="Convert a public dataset or a shop export to a Raycart dataset "
                                    "directory (local path or s3://bucket/prefix).")
    p.add_argument("--source", required=True, help=f"one of: {', '.join(SOURCES)}")
    p.add_argument("--input", help="input file or folder (local or s3://); not used by 'synthetic'")
    p.add_argument("--output", required=True, help="output dataset directory (local or s3://)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    group = p.add_argument_group("amazon")
    group.add_argument("--attributes", help="item2attributes JSON (default: beside the .txt file)")
    group = p.add_argument_group("generic")
    group.add_argument("--items", help="items table (CSV or Parquet) with item_id and content columns")
    group.add_argument("--string-ids", action="store_true", help="accept text user/item ids")
    group.add_argument("--default-event-type", default="click", help="event type when the table has none")
    group = p.add_argument_group("obd")
    group.add_argument("--campaign", default="all", help="all, men or women")
    group = p.add_argument_group("synthetic")
    group.add_argument("--num-users", type=int)
    group.add_argument("--num-items", type=int)
    group.add_argument("--num-events", type=int)
    group.add_argument("--image-size", type=int)
    group.add_argument("--taste-strength", type=float)
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--no-images", action="store_true", help="skip drawing item images")
    p.set_defaults(func=_cmd_prepare)
    i = dsub.add_parser("info", help="print a dataset's manifest")
    i.add_argument("data")
    i.set_defaults(func=_cmd_info)
