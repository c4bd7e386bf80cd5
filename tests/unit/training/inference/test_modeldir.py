"""The model card and per-component state of a model directory (training.inference.modeldir), without Ray."""

from __future__ import annotations

import json

import numpy as np
import pytest

from training.baselines.popularity import Popularity
from training.common.errors import DataError
from training.data.interactions import Interactions
from training.inference.modeldir import (
    FORMAT_VERSION,
    ModelCard,
    Reranks,
    TrainedOn,
    dataset_fingerprint,
    load_model,
    read_card,
    read_state,
    save_model_dir,
)


def _card(**over) -> ModelCard:
    return ModelCard(**{"kind": "popularity", "config": {}, "num_items": 4, "metrics": {"NDCG@10": 0.5},
                        "trained_on": TrainedOn(data="/d", source="synthetic", scheme="loo", fingerprint="ab12"),
                        **over})


def _saved(tmp_path, card: ModelCard | None = None):
    model = Popularity().fit(Interactions.from_lists([[0, 1, 1], [1, 2]], 4))
    config, state = model.state()
    out = tmp_path / "model"
    save_model_dir(str(out), card or _card(config=config), state)
    return out, model


def test_card_and_state_round_trip(tmp_path):
    card = _card(reranks=Reranks(path="/r", metrics={"HR@10": 0.1},
                                 trained_on=TrainedOn(data="/d", source="s", scheme="loo")),
                 history=[{"epoch": 1, "loss": 2.0}], resumes=1)
    out, model = _saved(tmp_path, card)
    again = read_card(str(out))
    assert again.format_version == FORMAT_VERSION and again.created  # stamped at save time
    assert again.reranks == card.reranks and again.trained_on == card.trained_on
    assert again.history == card.history and again.resumes == 1
    assert sorted(p.name for p in (out / "state").iterdir()) == ["popularity.npz"]  # one file per component
    assert set(read_state(str(out))) == {"popularity"}
    loaded = load_model(str(out))
    np.testing.assert_array_equal(loaded.counts, model.counts)


def test_another_format_version_is_refused_with_what_to_do(tmp_path):
    out, _ = _saved(tmp_path)
    doc = json.loads((out / "model.json").read_text())
    doc["format_version"] = 1
    (out / "model.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match="format version 1.*retrain"):
        read_card(str(out))
    del doc["format_version"]  # the directories written before the card was versioned
    (out / "model.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match="format version 1"):
        load_model(str(out))


def test_unknown_and_missing_fields_are_named(tmp_path):
    out, _ = _saved(tmp_path)
    doc = json.loads((out / "model.json").read_text())
    (out / "model.json").write_text(json.dumps({**doc, "surprise": 1}))
    with pytest.raises(DataError, match="unknown field.*surprise"):
        read_card(str(out))
    (out / "model.json").write_text(json.dumps({**doc, "trained_on": {"data": "/d"}}))
    with pytest.raises(DataError, match="trained_on.*missing.*source"):
        read_card(str(out))
    (out / "model.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="JSON object"):
        read_card(str(out))


def test_a_missing_component_and_a_missing_state_are_named(tmp_path):
    out, _ = _saved(tmp_path)
    (out / "state" / "popularity.npz").rename(out / "state" / "other.npz")
    with pytest.raises(DataError, match="no component 'popularity'.*other"):
        load_model(str(out))
    (out / "state" / "other.npz").unlink()
    with pytest.raises(DataError, match="no model state"):
        load_model(str(out))


def test_not_a_model_directory(tmp_path):
    with pytest.raises(DataError, match="not a Raycart model directory"):
        read_card(str(tmp_path))


def test_dataset_fingerprint_follows_the_manifest(tmp_path):
    assert dataset_fingerprint(str(tmp_path)) is None
    (tmp_path / "dataset.json").write_text('{"counts": {"events": 3}}')
    first = dataset_fingerprint(str(tmp_path))
    assert first is not None and len(first) == 16
    (tmp_path / "dataset.json").write_text('{"counts": {"events": 4}}')
    assert dataset_fingerprint(str(tmp_path)) != first
