"""Training configurations as YAML files (``raycart train KIND --config FILE``).

One file holds a section per model kind; each section has the model's config fields (``model``,
:class:`~training.models.retriever_config.RetrieverConfig` / ``RankerConfig``) and the run's
settings (``run``: the ``raycart train`` flags such as ``workers``, ``scheme``, ``valid_users``,
``text_encoder``)::

    retriever:
      model: {dim: 64, layers: 1, lr: 0.0034, epochs: 12}
      run: {workers: 2, valid_users: 3000}
    ranker:
      model: {train_candidates: 100, batch_size: 64}

Flags given on the command line override the file; the file overrides the library defaults.
``configs/`` holds the best known file per dataset, and ``raycart tune`` writes ``best.yaml``
in this format. Unknown sections and fields are errors that name the file and the field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from training.common.errors import DataError
from training.models.kinds import TRAINERS, trainer

KINDS = tuple(TRAINERS)
REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@dataclass(frozen=True)
class KindConfig:
    """One section: model fields and run settings (both plain mappings, checked on load)."""

    model: dict[str, Any] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)

    def model_config(self, config_cls, base=None, overrides: dict | None = None, where: str | None = None):
        """The model config, layered: ``base`` (default: the library's) < this section < ``overrides``;
        a bad value is a :class:`DataError` naming the class and ``where`` (the file)."""
        base = base if base is not None else config_cls()
        try:
            return config_cls(**{**base.to_dict(), **self.model, **(overrides or {})})
        except (TypeError, ValueError) as exc:
            raise DataError(f"{config_cls.__name__}{f' (--config {where})' if where else ''}: {exc}") from None


def read_yaml_mapping(path: str | Path, flag: str, expected: str) -> dict:
    """The YAML mapping in file ``path``; errors name the flag and the file (``expected``: what
    the mapping should hold, for the message)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{flag} {path}: no such file")
    try:
        loaded = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise DataError(f"{flag} {path}: not valid YAML ({exc})") from None
    if not isinstance(loaded, dict):
        raise DataError(f"{flag} {path}: expected a mapping {expected}")
    return loaded


def read_config(path: str | Path, kind: str, run_fields: set[str] | None = None) -> KindConfig:
    """The ``kind`` section of YAML file ``path``, its fields checked against the model config and,
    when given, the run settings the command accepts."""
    sections = read_yaml_mapping(path, "--config", f"with sections {', '.join(KINDS)}")
    unknown = sorted(set(sections) - set(KINDS) - {"notes"})
    if unknown:
        raise DataError(f"--config {path}: unknown section(s) {', '.join(map(str, unknown))} "
                        f"(sections: {', '.join(KINDS)}, notes)")
    section = sections.get(kind) or {}
    if not isinstance(section, dict) or set(section) - {"model", "run"}:
        raise DataError(f"--config {path}: section {kind!r} takes 'model' and 'run' mappings")
    model, run = section.get("model") or {}, section.get("run") or {}
    model_fields = {f.name for f in dataclasses.fields(trainer(kind).config_cls())}
    for name, part, known in (("model", model, model_fields), ("run", run, run_fields)):
        if not isinstance(part, dict):
            raise DataError(f"--config {path}: {kind}.{name} must be a mapping")
        if known is not None:
            bad = sorted(set(part) - known)
            if bad:
                raise DataError(f"--config {path}: unknown field(s) {kind}.{name}.{', '.join(bad)} "
                                f"(known: {', '.join(sorted(known))})")
    return KindConfig(model=dict(model), run=dict(run))


def write_config(path: str | Path, sections: dict[str, KindConfig], notes: str | None = None) -> None:
    """Write sections in the format :func:`read_config` reads (``raycart tune``'s ``best.yaml``)."""
    doc: dict[str, Any] = {}
    if notes:
        doc["notes"] = notes
    for kind, cfg in sections.items():
        if kind not in KINDS:
            raise ValueError(f"unknown section {kind!r}")
        doc[kind] = {k: v for k, v in (("model", cfg.model), ("run", cfg.run)) if v}
    Path(path).write_text(yaml.safe_dump(doc, sort_keys=False))


def dataset_config(name: str) -> Path | None:
    """``configs/<name>.yaml`` of this checkout (the best known configuration of a dataset)."""
    p = REPO_CONFIGS / f"{name}.yaml"
    return p if p.is_file() else None
