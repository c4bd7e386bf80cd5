import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from training.common.errors import DataError, StorageError
from training.data.dataset import load_dataset, save_dataset


def test_round_trip(tiny_dataset, tmp_path):
    manifest = save_dataset(tiny_dataset, str(tmp_path / "d"))
    ds = load_dataset(str(tmp_path / "d"))
    assert ds.events.to_pydict() == tiny_dataset.events.to_pydict()
    assert ds.items.to_pydict() == tiny_dataset.items.to_pydict()
    assert manifest["counts"]["events"] == ds.events.num_rows
    assert json.loads((tmp_path / "d" / "dataset.json").read_text())["source"] == "synthetic"


def test_existing_output_is_kept_without_overwrite(tiny_dataset, tmp_path):
    save_dataset(tiny_dataset, str(tmp_path / "d"))
    before = (tmp_path / "d" / "events.parquet").read_bytes()
    with pytest.raises(StorageError, match="already exists"):
        save_dataset(tiny_dataset, str(tmp_path / "d"))
    assert (tmp_path / "d" / "events.parquet").read_bytes() == before


def test_failure_while_writing_leaves_nothing(tiny_dataset, tmp_path):
    def boom(out):
        (out / "images").mkdir()
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_dataset(tiny_dataset, str(tmp_path / "d"), extra=boom)
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_the_old_dataset(tiny_dataset, tmp_path):
    save_dataset(tiny_dataset, str(tmp_path / "d"))
    with pytest.raises(RuntimeError):
        save_dataset(tiny_dataset, str(tmp_path / "d"), overwrite=True,
                     extra=lambda out: (_ for _ in ()).throw(RuntimeError("x")))
    assert load_dataset(str(tmp_path / "d")).events.num_rows == tiny_dataset.events.num_rows
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_bad_column_type_names_file_and_column(tiny_dataset, tmp_path):
    save_dataset(tiny_dataset, str(tmp_path / "d"))
    events = pq.read_table(tmp_path / "d" / "events.parquet")
    bad = events.set_column(events.schema.get_field_index("item_id"), "item_id",
                            pa.array(["x"] * events.num_rows))
    pq.write_table(bad, tmp_path / "d" / "events.parquet")
    with pytest.raises(DataError, match=r"events.parquet: column 'item_id' has type string"):
        load_dataset(str(tmp_path / "d"))


def test_missing_column_and_out_of_range_ids(tiny_dataset, tmp_path):
    save_dataset(tiny_dataset, str(tmp_path / "d"))
    events = pq.read_table(tmp_path / "d" / "events.parquet")
    pq.write_table(events.drop_columns(["timestamp"]), tmp_path / "d" / "events.parquet")
    with pytest.raises(DataError, match="missing required column 'timestamp'"):
        load_dataset(str(tmp_path / "d"))
    big = events.set_column(1, "item_id", pa.array([10**6] * events.num_rows, pa.int64()))
    pq.write_table(big, tmp_path / "d" / "events.parquet")
    with pytest.raises(DataError, match="'item_id' out of range"):
        load_dataset(str(tmp_path / "d"))


def test_not_a_dataset(tmp_path):
    with pytest.raises(DataError, match="no such dataset"):
        load_dataset(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a Raycart dataset"):
        load_dataset(str(tmp_path / "empty"))


def test_empty_events_rejected(tiny_dataset, tmp_path):
    from dataclasses import replace
    empty = replace(tiny_dataset, events=tiny_dataset.events.slice(0, 0))
    with pytest.raises(DataError, match="no events"):
        save_dataset(empty, str(tmp_path / "d"))
    assert not (tmp_path / "d").exists()


def test_corrupt_parquet_file_is_named(tiny_dataset, tmp_path):
    save_dataset(tiny_dataset, str(tmp_path / "d"))
    (tmp_path / "d" / "items.parquet").write_bytes(b"this is not parquet")
    with pytest.raises(DataError, match=r"items.parquet: not a readable Parquet file"):
        load_dataset(str(tmp_path / "d"))
