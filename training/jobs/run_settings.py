"""Where and how a Ray Train job runs, for every trainable kind: one home for these settings, their
defaults and their help. ``raycart train KIND`` generates its flags from :class:`RunSettings`
(:mod:`training.commands.train`), a config file's ``run:`` section takes the same keys
(:mod:`training.jobs.config_file`), and the job classes take their defaults from :data:`RUN`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

PLACEMENTS = ("PACK", "SPREAD", "STRICT_SPREAD", "STRICT_PACK")
MODALITIES = ("id", "attributes", "text", "image")


def _setting(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class RunSettings:
    scheme: str = _setting("loo", "split: loo, basket, time, cold (validation drives early stopping)")
    workers: int = _setting(2, "Ray Train workers")
    gpu: bool = _setting(False, "one GPU per worker (nccl + AMP)", flag="store_true")
    storage: str = _setting("raycart-work/ray-results", "checkpoint storage (local or s3://bucket/path)")
    max_failures: int = _setting(2, "worker failures to recover from")
    placement: str = _setting("PACK", "where the workers go: STRICT_SPREAD = one per node (a node loss costs "
                                      "one worker)", choices=PLACEMENTS)
    text_encoder: str | None = _setting(None, "text encoder: Hugging Face id or folder (e.g. "
                                              "../shared/models/all-MiniLM-L6-v2); the ranker fine-tunes it "
                                              "with --text-tune-layers N", type=str)
    image_encoder: str | None = _setting(None, "image encoder: torchvision weights enum or folder (e.g. "
                                               "../shared/models/mobilenet_v2-imagenet)", type=str)
    no: tuple[str, ...] = _setting((), "switch item-content inputs off (ablations)", nargs="*",
                                   choices=MODALITIES)


RUN = RunSettings()


def run_setting_flags() -> list[tuple[str, dict[str, Any]]]:
    """``(flag, argparse keyword arguments)`` for every setting, with ``default=None`` (a flag not
    given falls back to the config file, then to :data:`RUN`) and the default in the help."""
    out = []
    for f in fields(RunSettings):
        meta = dict(f.metadata)
        default = f.default
        help_ = meta.pop("help") + ("" if default in (None, (), False) else f" (default {default})")
        kwargs: dict[str, Any] = {"help": help_, "default": None}
        if meta.pop("flag", None) == "store_true":
            kwargs["action"] = "store_true"
        else:
            kwargs["type"] = meta.pop("type", type(default))
        kwargs.update(meta)
        if kwargs.get("nargs") == "*":
            kwargs.pop("type", None)
        out.append((f"--{f.name.replace('_', '-')}", kwargs))
    return out


def run_defaults() -> dict[str, Any]:
    """Every setting's default, by name (a config file's ``run:`` keys)."""
    return {f.name: (list(f.default) if isinstance(f.default, tuple) else f.default) for f in fields(RunSettings)}
