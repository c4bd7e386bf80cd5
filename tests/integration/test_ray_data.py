"""Ray Data readers over local and S3 datasets, on a real local Ray cluster bound to loopback."""

import numpy as np
import pytest
from netwatch import LOOPBACK, listeners

from training.common.errors import DataError
from training.data.dataset import load_dataset, save_dataset
from training.data.ray_io import read_events, read_items, read_table

pytestmark = pytest.mark.integration


def test_read_events_locally_matches_pyarrow(ray_cluster, tiny_dataset_dir):
    ds = read_events(tiny_dataset_dir)
    expected = load_dataset(tiny_dataset_dir).events
    assert ds.count() == expected.num_rows
    per_user = ds.groupby("user_id").count().to_pandas().set_index("user_id")["count()"]
    np.testing.assert_array_equal(per_user.sort_index().to_numpy(),
                                  np.bincount(expected["user_id"].to_numpy()))
    titles = read_items(tiny_dataset_dir, columns=["item_id", "title"]).take_all()
    assert len(titles) == load_dataset(tiny_dataset_dir).num_items and "title" in titles[0]


def test_read_events_from_s3(ray_cluster, s3_env, tiny_dataset):
    uri = f"s3://{s3_env['bucket']}/ray-data"
    save_dataset(tiny_dataset, uri, overwrite=True)
    batches = read_events(uri).map_batches(lambda b: {"n": [len(b["item_id"])]}, batch_format="numpy")
    assert batches.sum("n") == tiny_dataset.events.num_rows


def test_reader_errors_are_clear(ray_cluster, tiny_dataset_dir, tmp_path):
    with pytest.raises(DataError, match="has no 'bandit' table"):
        read_table(tiny_dataset_dir, "bandit")
    with pytest.raises(DataError, match="not a Raycart dataset"):
        read_events(str(tmp_path))


def test_ray_listens_only_on_loopback(ray_cluster):
    found = listeners()
    assert found, "no Ray listeners found"
    outside = [f for f in found if not f[0].startswith(LOOPBACK)]
    assert not outside, outside
