"""The registry of model kinds: every name it holds resolves, and loading and training read the
same entry (no second table to keep in step)."""

import inspect

import pytest

from training.common.errors import DataError
from training.inference.modeldir import ModelCard, TrainedOn, load_model
from training.models.kinds import KINDS, TRAINERS, trainer

JOB_FIELDS = {"data", "out", "model", "scheme", "workers", "storage", "name", "overwrite"}


@pytest.mark.parametrize("name", sorted(KINDS))
def test_every_kind_loads_through_its_entry(name):
    kind = KINDS[name]
    assert callable(kind.loader()) and list(inspect.signature(kind.loader()).parameters)[:2] == ["config", "state"]


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_every_trainable_kind_names_parts_that_exist(name):
    kind = trainer(name)
    assert JOB_FIELDS <= kind.job_fields()
    assert {"tiny", "to_dict"} <= set(dir(kind.config_cls()))
    for ref in (kind.train, kind.export, *([kind.check] if kind.check else [])):
        module, _, attr = ref.partition(":")
        assert callable(getattr(__import__(module, fromlist=[attr]), attr)), ref
    assert {f for f, _ in kind.inputs} <= kind.job_fields()
    assert {k for k, _ in kind.run_settings} <= kind.job_fields()


def test_baselines_are_loaded_not_trained_and_unknown_kinds_are_refused(tmp_path):
    assert set(KINDS) - set(TRAINERS) == {"popularity", "itemknn"}
    with pytest.raises(DataError, match="unknown model kind 'bert'"):
        trainer("bert")
    card = ModelCard(kind="bert", config={}, num_items=4, metrics={},
                     trained_on=TrainedOn(data="/d", source="synthetic", scheme="loo", fingerprint="ab12"))
    with pytest.raises(DataError, match="unknown model kind 'bert'"):
        load_model(str(tmp_path), card)
