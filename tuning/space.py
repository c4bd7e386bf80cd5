"""Search spaces as YAML: one key per model-config field, each a fixed value or a distribution.

    lr: {loguniform: [0.0005, 0.01]}
    dim: {choice: [32, 64, 128]}
    dropout: {uniform: [0.1, 0.5]}
    layers: {randint: [1, 3]}          # 1 or 2 (upper bound exclusive)
    max_len: 30                        # fixed

A top-level ``defaults`` mapping (same keys, plain values) is the hand-set configuration the
sweep also runs, so its result is compared with the best one found under the same budget.
Keys must be fields of the model's config (:class:`~training.models.retriever.RetrieverConfig` /
:class:`~training.models.ranker.RankerConfig`); anything else is an error that names it.
"""

from __future__ import annotations

import dataclasses

from training.common.errors import DataError
from training.jobs.config_file import read_yaml_mapping

DISTRIBUTIONS = ("loguniform", "uniform", "choice", "randint", "quniform")


def read_space(path: str, config_cls) -> tuple[dict, dict]:
    """``(space spec, defaults)`` from a YAML file, validated against ``config_cls``'s fields."""
    space = read_yaml_mapping(path, "--space", "of config fields")
    defaults = space.pop("defaults", {}) or {}
    fields = {f.name for f in dataclasses.fields(config_cls)}
    for key in [*space, *defaults]:
        if key not in fields:
            raise DataError(f"--space: {path}: '{key}' is not a {config_cls.__name__} field "
                            f"(known: {', '.join(sorted(fields))})")
    for key, spec in space.items():
        if isinstance(spec, dict):
            if len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
                raise DataError(f"--space: {path}: '{key}' must be a value or one of "
                                f"{{{', '.join(DISTRIBUTIONS)}: ...}}, got {spec}")
            kind, args = next(iter(spec.items()))
            if kind != "choice" and (not isinstance(args, list) or len(args) not in (2, 3)):
                raise DataError(f"--space: {path}: '{key}': {kind} takes [low, high]")
            if kind == "choice" and (not isinstance(args, list) or not args):
                raise DataError(f"--space: {path}: '{key}': choice takes a non-empty list")
    return space, defaults


def to_tune(spec: dict) -> dict:
    """The Ray Tune search space for a validated spec."""
    from ray import tune

    out = {}
    for key, value in spec.items():
        if not isinstance(value, dict):
            out[key] = value
            continue
        kind, args = next(iter(value.items()))
        out[key] = tune.choice(args) if kind == "choice" else getattr(tune, kind)(*args)
    return out


def grid_size(spec: dict) -> int | None:
    """Points of the full grid when every dimension is a choice/fixed value, else None."""
    n = 1
    for value in spec.values():
        if isinstance(value, dict):
            kind, args = next(iter(value.items()))
            if kind != "choice":
                return None
            n *= len(args)
    return n
