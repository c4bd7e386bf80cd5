"""The model kinds that Ray Train trains, behind one interface.

``raycart train KIND`` (:mod:`training.commands.train`), the Tune sweep (:mod:`tuning.sweep`) and the
retrain job (:mod:`serving.jobs.retrain`) dispatch through :data:`TRAINERS`; a new kind is one module
with a job class, a config class and ``train``/``export`` functions, plus one entry here.

Everything is named as ``"module:attribute"`` and imported on use, so the CLI starts without
loading torch or Ray.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any


def _load(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Trainer:
    """One trainable kind.

    - ``config``: its model config class (a frozen dataclass with ``tiny()`` and ``to_dict()``);
    - ``job``: its job class (a dataclass with at least ``data, out, model, scheme, workers,
      storage, name, overwrite``);
    - ``train(job, callbacks=None) -> metrics``: the whole Ray Train run and the export;
    - ``export(job, None, saved_state) -> metrics``: the model directory from a checkpoint's state;
    - ``check(job)``: fails fast on bad inputs, before Ray starts (None: nothing to check);
    - ``run_settings``: the ``run`` settings of a config file / CLI beyond the common ones.
    """

    kind: str
    summary: str
    config: str
    job: str
    train: str
    export: str
    check: str | None = None
    run_settings: tuple[tuple[str, Any], ...] = ()
    inputs: tuple[tuple[str, str], ...] = ()  # other model directories it needs: (job field, help)

    def config_cls(self) -> type:
        return _load(self.config)

    def job_cls(self) -> type:
        return _load(self.job)

    def job_fields(self) -> set[str]:
        return {f.name for f in dataclasses.fields(self.job_cls())}

    def run_train(self, job, callbacks: list | None = None) -> dict:
        return _load(self.train)(job, callbacks=callbacks)

    def run_export(self, job, saved: dict) -> dict:
        return _load(self.export)(job, None, saved)

    def run_check(self, job) -> None:
        if self.check:
            _load(self.check)(job)


TRAINERS: dict[str, Trainer] = {
    "retriever": Trainer(
        kind="retriever", summary="the multimodal two-tower retriever",
        config="training.models.retriever_config:RetrieverConfig",
        job="training.jobs.train_retriever:RetrieverJob",
        train="training.jobs.train_retriever:train_retriever", export="training.jobs.train_retriever:export_retriever",
        run_settings=(("cache_dir", "raycart-work/cache"), ("valid_users", 0))),
    "ranker": Trainer(
        kind="ranker", summary="the multimodal ranker over the retriever's candidates",
        config="training.models.ranker_config:RankerConfig",
        job="training.jobs.train_ranker:RankerJob",
        train="training.jobs.train_ranker:train_ranker", export="training.jobs.train_ranker:export_ranker",
        check="training.jobs.train_ranker:check_job",
        run_settings=(("valid_fraction", 0.1),),
        inputs=(("retriever", "trained retriever model directory (local or s3://)"),)),
}


def trainer(kind: str) -> Trainer:
    from training.common.errors import DataError

    if kind not in TRAINERS:
        raise DataError(f"unknown model kind {kind!r} (trainable: {', '.join(TRAINERS)})")
    return TRAINERS[kind]
