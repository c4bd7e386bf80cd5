"""``raycart train retriever``: a thin CLI over :func:`training.train_retriever.train_retriever`."""

from __future__ import annotations

import argparse
import dataclasses


def _cmd_retriever(args: argparse.Namespace) -> int:
    from training.models.encoders import ImageEncoderConfig, TextEncoderConfig
    from training.models.retriever_config import RetrieverConfig
    from training.ray_env import init_ray
    from training.train_retriever import RetrieverJob, train_retriever

    base = RetrieverConfig.tiny() if args.smoke else RetrieverConfig()
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(RetrieverConfig)
                 if getattr(args, f.name, None) is not None}
    for modality in ("id", "attributes", "text", "image"):
        if modality in args.no:
            overrides[f"use_{modality}"] = False
    try:
        model = RetrieverConfig(**{**base.to_dict(), **overrides})
    except ValueError as exc:
        from training.errors import RaycartError
        raise RaycartError(f"retriever config: {exc}") from exc
    job = RetrieverJob(
        data=args.data, out=args.out, model=model, scheme=args.scheme, workers=args.workers, use_gpu=args.gpu,
        storage=args.storage, name=args.name, max_failures=args.max_failures,
        text=TextEncoderConfig(args.text_encoder) if args.text_encoder else None,
        image=ImageEncoderConfig(weights=args.image_encoder) if args.image_encoder else None,
        cache_dir=args.cache_dir, valid_users=args.valid_users)
    init_ray(num_gpus=None)
    train_retriever(job)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="train models with Ray Train")
    tsub = train.add_subparsers(dest="train_command", metavar="MODEL", required=True)
    p = tsub.add_parser("retriever", help="the multimodal two-tower retriever",
                        description="Train the two-tower retriever with Ray Train (DDP over --workers), "
                                    "checkpointing every epoch to --storage, and export a model directory.")
    p.add_argument("--data", required=True, help="dataset directory (local or s3://)")
    p.add_argument("--out", required=True, help="model directory to write (local or s3://)")
    p.add_argument("--scheme", default="loo", help="split: loo, basket, time, cold (validation drives early stopping)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--gpu", action="store_true", help="one GPU per worker (nccl + AMP)")
    p.add_argument("--storage", default="raycart-work/ray-results", help="checkpoint storage (local or s3://bucket/path)")
    p.add_argument("--name", help="Ray Train run name (default: derived from the job; a rerun resumes)")
    p.add_argument("--max-failures", type=int, default=2, help="worker failures to recover from")
    p.add_argument("--text-encoder", help="Hugging Face id or folder (e.g. ../shared/models/all-MiniLM-L6-v2)")
    p.add_argument("--image-encoder", help="torchvision weights enum or folder (e.g. ../shared/models/mobilenet_v2-imagenet)")
    p.add_argument("--cache-dir", default="raycart-work/cache", help="content-embedding cache (local or s3://)")
    p.add_argument("--valid-users", type=int, default=0, help="validate on a fixed sample of users (0 = all)")
    p.add_argument("--no", nargs="*", default=[], choices=["id", "attributes", "text", "image"],
                   help="switch modalities off (ablations)")
    p.add_argument("--smoke", action="store_true", help="tiny model and few epochs (tests, CI)")
    from training.models.retriever_config import RetrieverConfig

    for f in dataclasses.fields(RetrieverConfig):
        if f.name.startswith("use_"):
            continue
        p.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=type(f.default) if f.default is not None else str)
    p.set_defaults(func=_cmd_retriever)
