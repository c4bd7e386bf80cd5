"""Reproduce the S3-Rec paper's published full-ranking PopRec numbers on Amazon Beauty, and
check the real-data converters against the counts documented in ../shared/README.md."""

import numpy as np
import pyarrow.compute as pc
import pytest
from PIL import Image

from training.baselines.itemknn import ItemKNN
from training.baselines.popularity import Popularity
from training.data.dataset import load_dataset, save_dataset
from training.data.sources import get_source
from training.data.splits import build_split, split_from_manifest
from training.evaluation.metrics import EvalConfig, evaluate

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def beauty(shared):
    return get_source("amazon")(str(shared / "data/amazon/Beauty.txt")).dataset


def test_beauty_counts(beauty):
    assert (beauty.num_users, beauty.num_items, beauty.events.num_rows) == (22_363, 12_101, 198_502)


def test_beauty_poprec_all_interactions_matches_s3rec_paper(beauty):
    task = build_split(beauty, split_from_manifest(beauty, "loo"), "test")
    m = evaluate(Popularity().fit(task.full).score, task, EvalConfig(ks=(10, 20)))
    got = {k: round(m[k], 4) for k in ("HR@10", "NDCG@10", "HR@20", "NDCG@20")}
    assert got == {"HR@10": 0.0152, "NDCG@10": 0.0068, "HR@20": 0.0217, "NDCG@20": 0.0084}


def test_beauty_poprec_preceding_interactions(beauty):
    task = build_split(beauty, split_from_manifest(beauty, "loo"), "test")
    m = evaluate(Popularity().fit(task.train).score, task, EvalConfig(ks=(10,)))
    assert (round(m["HR@10"], 4), round(m["NDCG@10"], 4)) == (0.0135, 0.0061)


def test_sports_poprec_all_interactions_matches_s3rec_paper(shared):
    sports = get_source("amazon")(str(shared / "data/amazon/Sports_and_Outdoors.txt")).dataset
    assert (sports.num_users, sports.num_items, sports.events.num_rows) == (35_598, 18_357, 296_337)
    task = build_split(sports, split_from_manifest(sports, "loo"), "test")
    m = evaluate(Popularity().fit(task.full).score, task, EvalConfig(ks=(10, 20)))
    got = {k: round(m[k], 4) for k in ("HR@10", "NDCG@10", "HR@20", "NDCG@20")}
    assert got == {"HR@10": 0.0094, "NDCG@10": 0.0053, "HR@20": 0.0192, "NDCG@20": 0.0078}


def test_online_retail_cleaning_counts(shared, tmp_path):
    p = get_source("online-retail")(str(shared / "data/online-retail/online_retail.csv.gz"))
    steps = p.dataset.notes["cleaning"]
    assert steps["rows read"] == 541_909
    assert steps["Quantity > 0"] == 397_924  # the README's count after the first three steps
    assert p.dataset.notes["invoices"] == 18_405
    assert abs(p.dataset.num_users - 4_339) <= 5 and abs(p.dataset.num_items - 3_665) <= 10
    save_dataset(p.dataset, str(tmp_path / "or"))
    ds = load_dataset(str(tmp_path / "or"))
    task = build_split(ds, split_from_manifest(ds, "loo"), "test")
    pop = evaluate(Popularity().fit(task.train).score, task)
    knn = evaluate(ItemKNN().fit(task.train).score, task)
    assert knn["NDCG@10"] > 2 * pop["NDCG@10"]
    basket = build_split(ds, split_from_manifest(ds, "basket"), "test")
    assert basket.targets.lengths().mean() > 1  # whole invoices are held out
    time_task = build_split(ds, split_from_manifest(ds, "time"), "test")
    assert time_task.info["test_start"].startswith("2011-11-09")
    assert (np.diff(ds.events["timestamp"].cast("int64").to_numpy()) != 0).any()


def test_hm_with_photos(shared, tmp_path):
    p = get_source("hm")(str(shared / "data/hm"))
    save_dataset(p.dataset, str(tmp_path / "hm"), extra=p.extra)
    ds = load_dataset(str(tmp_path / "hm"))
    assert (ds.num_items, ds.events.num_rows) == (1_000, 5_000)
    images = [i for i in ds.items["image"].to_pylist() if i]
    assert len(images) == 100
    with Image.open(tmp_path / "hm" / images[0]) as img:
        assert max(img.size) == 512
    assert all(t for t in ds.items["title"].to_pylist())


def test_obd_logged_bandit_feedback(shared, tmp_path):
    p = get_source("obd")(str(shared / "data/obd"))
    save_dataset(p.dataset, str(tmp_path / "obd"))
    ds = load_dataset(str(tmp_path / "obd"))
    bandit = ds.bandit
    assert bandit.num_rows == 20_000 and ds.num_items == 80
    random = bandit.filter(pc.equal(bandit["policy"], "random"))
    # the uniform-random logger shows each of 80 items with propensity 1/80 per slot
    np.testing.assert_allclose(random["propensity"].to_numpy(), 1 / 80)
    assert set(bandit["position"].to_pylist()) == {1, 2, 3}
    assert ds.events.num_rows == int(pc.sum(bandit["click"]).as_py())
    assert len(bandit["affinity"][0].as_py()) == 80
