"""Ray Data readers over local and S3 datasets, on a real local Ray cluster bound to loopback."""

import re
import subprocess

import numpy as np
import pytest

from training.data.dataset import load_dataset, save_dataset
from training.data.ray_io import read_events, read_items, read_table
from training.errors import DataError

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
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    ours = [line for line in out.splitlines() if re.search(r'"(ray|raylet|gcs_server|python|weed)', line)]
    assert ours, "no Ray listeners found"
    for line in ours:
        local = line.split()[3]
        pid = re.search(r"pid=(\d+)", line).group(1)
        try:
            cmd = open(f"/proc/{pid}/cmdline").read().replace("\0", " ")[:200]
        except OSError:
            cmd = "?"
        assert local.startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:", "[::1]:")), f"{line}\n{cmd}"
