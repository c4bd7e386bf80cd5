import gzip
import json

import numpy as np
import pyarrow.compute as pc
import pytest
from PIL import Image

from training.common.errors import DataError
from training.data.sources import get_source
from training.data.sources.synthetic import COLOURS, SyntheticConfig, generate

RETAIL_HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
RETAIL_ROWS = [
    "536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom",
    "536365,71053,WHITE METAL LANTERN,6,2010-12-01 08:26:00,3.39,17850.0,United Kingdom",
    "536366,85123A,CREAM HANGING HEART T-LIGHT HOLDER,2,2010-12-01 09:00:00,2.55,13047.0,United Kingdom",
    "536367,85123A,WHITE HANGING HEART T-LIGHT HOLDER,1,2010-12-02 09:00:00,2.55,13047.0,United Kingdom",
    "536368,71053,WHITE METAL LANTERN,1,2010-12-02 10:00:00,3.39,,United Kingdom",  # no customer
    "C536379,71053,WHITE METAL LANTERN,-1,2010-12-02 11:00:00,3.39,17850.0,United Kingdom",  # cancel
    "536380,22139,RETROSPOT TEA SET,-3,2010-12-02 12:00:00,4.95,17850.0,United Kingdom",  # qty <= 0
    "536381,POST,POSTAGE,1,2010-12-02 12:00:00,18.0,12583.0,France",  # not a product
    "536382,22139,RETROSPOT TEA SET,1,2010-12-03 12:00:00,4.95,12583.0,France",
]


def test_online_retail_cleaning(tmp_path):
    path = tmp_path / "retail.csv.gz"
    path.write_bytes(gzip.compress((RETAIL_HEADER + "\n".join(RETAIL_ROWS) + "\n").encode()))
    prepared = get_source("online-retail")(str(path))
    ds = prepared.dataset
    assert ds.notes["cleaning"] == {"rows read": 9, "with a CustomerID": 8,
                                    "not cancellations (InvoiceNo C...)": 7, "Quantity > 0": 6,
                                    "product stock codes": 5}
    assert ds.notes["dropped_stock_codes"] == ["POST"]
    assert ds.num_items == 3 and ds.num_users == 3 and ds.events.num_rows == 5
    titles = dict(zip(ds.items["external_id"].to_pylist(), ds.items["title"].to_pylist()))
    assert titles["85123A"] == "WHITE HANGING HEART T-LIGHT HOLDER"  # the most frequent spelling
    desc = dict(zip(ds.items["external_id"].to_pylist(), ds.items["description"].to_pylist()))
    assert desc["85123A"] == "CREAM HANGING HEART T-LIGHT HOLDER"
    assert ds.users["external_id"].to_pylist() == ["12583", "13047", "17850"]


def test_online_retail_wrong_columns(tmp_path):
    path = tmp_path / "retail.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="missing column.*InvoiceNo"):
        get_source("online-retail")(str(path))


def test_amazon_sequences_and_attributes(tmp_path):
    (tmp_path / "Toy.txt").write_text("1 10 11 12\n2 11 13\n")
    (tmp_path / "Toy_item2attributes.json").write_text(json.dumps({"10": [1, 2], "13": [3]}))
    ds = get_source("amazon")(str(tmp_path / "Toy.txt")).dataset
    assert ds.num_items == 4 and ds.num_users == 2
    assert ds.interactions().row(0).tolist() == [0, 1, 2]
    assert ds.items["attributes"].to_pylist()[0] == ["attr_1", "attr_2"]


def test_amazon_non_numeric_item(tmp_path):
    (tmp_path / "Bad.txt").write_text("1 10 11\n2 11 x13\n")
    with pytest.raises(DataError, match=r"Bad.txt:2: item id 'x13' is not an integer"):
        get_source("amazon")(str(tmp_path / "Bad.txt"))


def test_generic_events_and_items(tmp_path):
    (tmp_path / "events.csv").write_text(
        "user_id,item_id,timestamp,event_type\n7,100,2024-05-01T10:00:00Z,view\n7,101,2024-05-01T10:01:00Z,purchase\n"
        "8,100,1714557600,click\n")
    (tmp_path / "items.csv").write_text("item_id,title,price,image,colour\n100,Red mug,3.5,img/100.png,red\n"
                                        "102,Blue mug,4.0,,blue\n")
    ds = get_source("generic")(str(tmp_path / "events.csv"), items=str(tmp_path / "items.csv")).dataset
    assert ds.items["external_id"].to_pylist() == ["100", "101", "102"]
    assert ds.items["title"].to_pylist() == ["Red mug", None, "Blue mug"]
    assert ds.items["image"][0].as_py() == str(tmp_path / "img/100.png")
    assert ds.items["attributes"].to_pylist()[2] == ["colour=blue"]
    assert ds.events["event_type"].to_pylist() == ["view", "purchase", "click"]


@pytest.mark.parametrize("content,message", [
    ("user_id,item_id,timestamp\nu1,100,2024-01-01\n", "non-numeric id 'u1' in row 2.*--string-ids"),
    ("user_id,item,timestamp\n1,100,2024-01-01\n", "missing column.*'item_id'"),
    ("user_id,item_id,timestamp\n1,100,yesterday\n", "not a date in row 2"),
    ("user_id,item_id,timestamp,event_type\n1,100,2024-01-01,like\n", "'like' in row 2"),
    ("", "empty file"),
])
def test_generic_bad_input(tmp_path, content, message):
    path = tmp_path / "events.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        get_source("generic")(str(path))


def test_generic_string_ids_when_asked(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("user_id,item_id,timestamp\nu1,SKU-9,2024-01-01\nu2,SKU-1,2024-01-02\n")
    ds = get_source("generic")(str(path), string_ids=True).dataset
    assert ds.items["external_id"].to_pylist() == ["SKU-1", "SKU-9"]


def test_synthetic_is_seeded_and_plants_tastes():
    cfg = SyntheticConfig(num_users=300, num_items=400, num_events=20_000, images=False)
    a, _ = generate(cfg)
    b, _ = generate(cfg)
    c, _ = generate(SyntheticConfig(**{**cfg.__dict__, "seed": 1}))
    assert a.events.equals(b.events) and not a.events.equals(c.events)
    assert a.events.num_rows == 20_000
    assert set(pc.unique(a.events["event_type"]).to_pylist()) == {"view", "click", "cart", "purchase"}
    # share of views in one of the user's planted categories: about taste_strength + chance
    taste = {u: {t.split("=")[1] for t in attrs if t.startswith("taste_category=")}
             for u, attrs in zip(a.users["user_id"].to_pylist(), a.users["attributes"].to_pylist())}
    cats = np.array(a.items["category"].to_pylist())
    users, items = a.events["user_id"].to_numpy(), a.events["item_id"].to_numpy()
    share = np.mean([cats[i] in taste[u] for u, i in zip(users, items)])
    assert share > 0.75


def test_synthetic_images_follow_attributes(tmp_path):
    from training.data.dataset import load_dataset, save_dataset
    from training.data.sources.synthetic import prepare

    p = prepare(None, **SyntheticConfig.tiny().__dict__)
    save_dataset(p.dataset, str(tmp_path / "d"), extra=p.extra)
    ds = load_dataset(str(tmp_path / "d"))
    for row in ds.items.slice(0, 12).to_pylist():
        img = np.asarray(Image.open(tmp_path / "d" / row["image"]).convert("RGB"), dtype=float)
        colour = next(a.split("=")[1] for a in row["attributes"] if a.startswith("colour="))
        centre = img[12:20, 12:20].reshape(-1, 3).mean(0)
        dists = {name: np.linalg.norm(centre / max(centre.max(), 1) - np.array(rgb) / max(max(rgb), 1))
                 for name, rgb in list(COLOURS.items())[:3]}
        assert min(dists, key=dists.get) == colour, (row["title"], dists)


def test_synthetic_rejects_bad_config():
    with pytest.raises(DataError, match="num_items"):
        SyntheticConfig(num_items=5)
    with pytest.raises(DataError, match="unknown option"):
        SyntheticConfig.from_options(num_shops=3)
