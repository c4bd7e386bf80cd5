"""The Amazon source records that its timestamps are sequence positions, and the manifest keeps it."""

import json

import pytest

from training.common.errors import DataError
from training.data.dataset import load_dataset, save_dataset
from training.data.sources import get_source


def _amazon(tmp_path):
    (tmp_path / "Toy.txt").write_text("1 10 11 12\n2 11 13\n")
    return get_source("amazon")(str(tmp_path / "Toy.txt")).dataset


def test_amazon_dataset_says_its_timestamps_are_positions(tmp_path):
    ds = _amazon(tmp_path)
    assert ds.timestamps == "position"
    # the positions themselves: 0, 1, 2 for the first user, 0, 1 for the second (seconds)
    assert (ds.interactions().times // 1_000_000).tolist() == [0, 1, 2, 0, 1]
    save_dataset(ds, str(tmp_path / "d"))
    assert json.loads((tmp_path / "d" / "dataset.json").read_text())["timestamps"] == "position"
    assert load_dataset(str(tmp_path / "d")).timestamps == "position"


def test_sources_with_times_say_time(tiny_dataset, tmp_path):
    assert tiny_dataset.timestamps == "time"
    save_dataset(tiny_dataset, str(tmp_path / "d"))
    assert json.loads((tmp_path / "d" / "dataset.json").read_text())["timestamps"] == "time"
    assert load_dataset(str(tmp_path / "d")).timestamps == "time"


def _edit_manifest(path, **changes):
    doc = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            doc.pop(key)
        else:
            doc[key] = value
    path.write_text(json.dumps(doc))


def test_a_manifest_from_before_the_field(tmp_path, tiny_dataset):
    """Datasets prepared before ``timestamps`` existed: Amazon ones are positions, others times."""
    save_dataset(_amazon(tmp_path), str(tmp_path / "amazon"))
    _edit_manifest(tmp_path / "amazon" / "dataset.json", timestamps=None)
    assert load_dataset(str(tmp_path / "amazon")).timestamps == "position"
    save_dataset(tiny_dataset, str(tmp_path / "synth"))
    _edit_manifest(tmp_path / "synth" / "dataset.json", timestamps=None)
    assert load_dataset(str(tmp_path / "synth")).timestamps == "time"


def test_an_unknown_timestamp_kind_is_refused(tmp_path):
    ds = _amazon(tmp_path)
    save_dataset(ds, str(tmp_path / "d"))
    _edit_manifest(tmp_path / "d" / "dataset.json", timestamps="order")
    with pytest.raises(DataError, match=r"d/dataset.json: 'timestamps' is 'order'; expected one of \['time', 'position'\]"):
        load_dataset(str(tmp_path / "d"))
    ds.timestamps = "seconds"
    with pytest.raises(DataError, match="amazon:Toy: 'timestamps' is 'seconds'"):
        save_dataset(ds, str(tmp_path / "e"))
    assert not (tmp_path / "e").exists()
