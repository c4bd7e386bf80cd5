"""``raycart train KIND``: one thin CLI over every kind of :data:`training.models.kinds.TRAINERS`.

Settings come from, in order of precedence: the flags, the ``--config`` YAML file
(:mod:`training.jobs.config_file`), the library defaults (``tiny()`` with ``--smoke``)."""

from __future__ import annotations

import argparse
import dataclasses

from training.jobs.config_file import KindConfig
from training.jobs.run_settings import run_defaults as common_run_defaults
from training.jobs.run_settings import run_setting_flags
from training.models.kinds import TRAINERS, ModelKind

# The run settings every kind takes (a config file's ``run`` section) with their defaults, from
# RunSettings; each kind adds its own (ModelKind.run_settings).
COMMON_RUN = common_run_defaults()


def run_defaults(t: ModelKind) -> dict:
    return {**COMMON_RUN, **dict(t.run_settings)}


RETRIEVER_RUN = run_defaults(TRAINERS["retriever"])
RANKER_RUN = run_defaults(TRAINERS["ranker"])


def register(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="train models with Ray Train")
    tsub = train.add_subparsers(dest="train_command", metavar="MODEL", required=True)
    for t in TRAINERS.values():
        p = tsub.add_parser(t.kind, help=t.summary,
                            description=f"Train {t.summary} with Ray Train (DDP over --workers), checkpointing "
                                        "every epoch to --storage, and export a model directory.")
        for name, help_ in t.inputs:
            p.add_argument(f"--{name.replace('_', '-')}", required=True, help=help_)
        _run_flags(p, t)
        _config_flags(p, t.config_cls())
        p.set_defaults(func=_cmd, trainer=t.kind)


def _run_flags(p: argparse.ArgumentParser, t: ModelKind) -> None:
    """What every Ray Train job takes: data, output, and where and how it runs (the flags of
    :class:`~training.jobs.run_settings.RunSettings`). Defaults are None here: a flag not given falls
    back to the config file, then to :data:`COMMON_RUN`."""
    p.add_argument("--config", help="YAML configuration (training.jobs.config_file; e.g. configs/beauty.yaml); "
                                    "flags given here override it")
    p.add_argument("--data", required=True, help="dataset directory (local or s3://)")
    p.add_argument("--out", required=True, help="model directory to write (local or s3://)")
    p.add_argument("--name", help="Ray Train run name (default: derived from the job; a rerun resumes)")
    for flag, kwargs in run_setting_flags():  # scheme, workers, gpu, storage, ... (training.jobs.run_settings)
        p.add_argument(flag, **kwargs)
    p.add_argument("--smoke", action="store_true", help="tiny model and few epochs (tests, CI)")
    for key, default in t.run_settings:
        p.add_argument(f"--{key.replace('_', '-')}", type=type(default), help=f"(default {default})")


def _config_flags(p: argparse.ArgumentParser, config_cls) -> None:
    """One ``--flag`` per config field (``use_*`` switches go through ``--no``)."""
    for f in dataclasses.fields(config_cls):
        if f.name.startswith("use_"):
            continue
        p.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=type(f.default) if f.default is not None else str)


def _read_file(args: argparse.Namespace, kind: str):
    from training.jobs.config_file import read_config

    if not args.config:
        return KindConfig()
    return read_config(args.config, kind, set(run_defaults(TRAINERS[kind])))


def _run_settings(args: argparse.Namespace, file, defaults: dict) -> dict:
    """Each run setting from the flag when given, else the config file, else its default."""
    out = {}
    for key, default in defaults.items():
        flag = getattr(args, key, None)
        out[key] = flag if flag is not None else file.run.get(key, default)
    return out


def _config_from_args(args: argparse.Namespace, config_cls, file: KindConfig | None = None,
                      switched_off: list[str] | None = None):
    """The model config: library defaults (``tiny()`` with --smoke) < the config file < flags."""
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls)
                 if getattr(args, f.name, None) is not None}
    for modality in ("id", "attributes", "text", "image"):
        if modality in (switched_off or []):
            overrides[f"use_{modality}"] = False
    return (file or KindConfig()).model_config(
        config_cls, config_cls.tiny() if args.smoke else None, overrides, getattr(args, "config", None))


def build_job(args: argparse.Namespace):
    """The kind's job from the parsed flags and the config file."""
    from training.models.encoders import ImageEncoderConfig, TextEncoderConfig

    t = TRAINERS[args.trainer]
    file = _read_file(args, t.kind)
    run = _run_settings(args, file, run_defaults(t))
    values = {
        "data": args.data, "out": args.out, "name": args.name, "use_gpu": run["gpu"],
        "model": _config_from_args(args, t.config_cls(), file, run["no"]),
        "text": TextEncoderConfig(run["text_encoder"]) if run["text_encoder"] else None,
        "image": ImageEncoderConfig(weights=run["image_encoder"]) if run["image_encoder"] else None,
        **{k: v for k, v in run.items() if k not in ("gpu", "no", "text_encoder", "image_encoder")},
        **{name: getattr(args, name) for name, _ in t.inputs},
    }
    fields = t.job_fields()
    return t.job_cls()(**{k: v for k, v in values.items() if k in fields})


def _cmd(args: argparse.Namespace) -> int:
    from training.common.ray_env import init_ray
    from training.data.dataset import load_dataset

    t = TRAINERS[args.trainer]
    job = build_job(args)
    load_dataset(args.data)  # bad paths and inputs fail here, before Ray starts
    t.run_check(job)
    init_ray(num_gpus=None)
    t.run_train(job)
    return 0
