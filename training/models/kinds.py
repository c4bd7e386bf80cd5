"""Every model kind Raycart knows, registered once, for loading and for training.

A model directory names its kind (``model.json``); :data:`KINDS` says how each kind is loaded
(``load``: its ``from_state``, used by :func:`training.inference.modeldir.load_model`) and, for the
kinds Ray Train trains (:data:`TRAINERS`), its config class, job class and ``train``/``export``/
``check`` functions -- what ``raycart train KIND`` (:mod:`training.commands.train`), the Tune sweep
(:mod:`tuning.sweep`) and the retrain job (:mod:`serving.jobs.retrain`) dispatch through. A new kind
is one module with those parts plus one entry here.

Everything is named as ``"module:attribute"`` and imported on use, so the registry imports no
model code, torch or Ray (the CLI starts fast, and this base layer depends on nothing above it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from training.common.importpath import resolve


@dataclass(frozen=True)
class ModelKind:
    """One model kind.

    - ``load``: ``from_state(config, state)`` of its model directory's content;
    - ``config``: its model config class (a frozen dataclass with ``tiny()`` and ``to_dict()``);
    - ``job``: its job class (a dataclass with at least ``data, out, model, scheme, workers,
      storage, name, overwrite``);
    - ``train(job, callbacks=None) -> metrics``: the whole Ray Train run and the export;
    - ``export(job, None, saved_state) -> metrics``: the model directory from a checkpoint's state;
    - ``check(job)``: fails fast on bad inputs, before Ray starts (None: nothing to check);
    - ``run_settings``: the ``run`` settings of a config file / CLI beyond the common ones
      (:class:`training.jobs.run_settings.RunSettings`).

    A kind without ``train`` (the baselines) is loaded only; ``raycart baseline`` fits those.
    """

    kind: str
    load: str
    summary: str = ""
    config: str = ""
    job: str = ""
    train: str = ""
    export: str = ""
    check: str | None = None
    run_settings: tuple[tuple[str, Any], ...] = ()
    inputs: tuple[tuple[str, str], ...] = ()  # other model directories it needs: (job field, help)

    @property
    def trainable(self) -> bool:
        return bool(self.train)

    def loader(self) -> Any:
        return resolve(self.load)

    def config_cls(self) -> type:
        return resolve(self.config)

    def job_cls(self) -> type:
        return resolve(self.job)

    def job_fields(self) -> set[str]:
        return {f.name for f in dataclasses.fields(self.job_cls())}

    def run_train(self, job, callbacks: list | None = None) -> dict:
        return resolve(self.train)(job, callbacks=callbacks)

    def run_export(self, job, saved: Mapping[str, Any]) -> dict:  # a checkpoint's SavedState (training.jobs.loop)
        return resolve(self.export)(job, None, saved)

    def run_check(self, job) -> None:
        if self.check:
            resolve(self.check)(job)


KINDS: dict[str, ModelKind] = {k.kind: k for k in (
    ModelKind(kind="popularity", load="training.baselines.popularity:Popularity.from_state"),
    ModelKind(kind="itemknn", load="training.baselines.itemknn:ItemKNN.from_state"),
    ModelKind(
        kind="retriever", load="training.models.retriever:RetrieverScorer.from_state",
        summary="the multimodal two-tower retriever",
        config="training.models.retriever_config:RetrieverConfig",
        job="training.jobs.train_retriever:RetrieverJob",
        train="training.jobs.train_retriever:train_retriever", export="training.jobs.train_retriever:export_retriever",
        run_settings=(("cache_dir", "raycart-work/cache"), ("valid_users", 0))),
    ModelKind(
        kind="ranker", load="training.inference.pipeline:Pipeline.from_state",
        summary="the multimodal ranker over the retriever's candidates",
        config="training.models.ranker_config:RankerConfig",
        job="training.jobs.ranker_data:RankerJob",
        train="training.jobs.train_ranker:train_ranker", export="training.jobs.train_ranker:export_ranker",
        check="training.jobs.ranker_data:check_job",
        run_settings=(("valid_fraction", 0.1),),
        inputs=(("retriever", "trained retriever model directory (local or s3://)"),)),
)}
TRAINERS: dict[str, ModelKind] = {name: k for name, k in KINDS.items() if k.trainable}


def trainer(kind: str) -> ModelKind:
    from training.common.errors import DataError

    if kind not in TRAINERS:
        raise DataError(f"unknown model kind {kind!r} (trainable: {', '.join(TRAINERS)})")
    return TRAINERS[kind]
