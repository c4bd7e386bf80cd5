"""The catalogue-only shop page (``raycart shop``, :mod:`serving.commands.shop`) over a small prepared shop,
Ray-free through Starlette's test client: what the page asks (mode, categories, catalogue pages,
customers, pictures), what it refuses (bad paging, paths, the API it does not serve), and the
same guard as the app (without keys nothing unless loopback is trusted, as ``raycart shop`` does; a
shopper key with them). The real-browser test
on the H&M sample is tests/realdata/test_shop_page_hm.py."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from route_guard import OPEN, check_route_table
from starlette.testclient import TestClient

from serving.commands.serve import listen_keys
from serving.commands.shop import CatalogueArgs, CatalogueOnly, catalogue_app
from serving.edge.security import ApiKeys
from serving.edge.shop import ShopPage
from training.common.errors import DataError
from training.data.dataset import load_dataset, save_dataset
from training.data.prepare import prepare

SHOP = "shopper-key-0123456789"


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> str:
    """100 drawn items in 12 categories, every third one without a picture, one without a category."""
    root = tmp_path_factory.mktemp("browse")
    drawn = str(root / "drawn")
    prepare("synthetic", None, drawn, num_users=60, num_items=100, num_events=800, images=True)
    ds = load_dataset(drawn)
    keys = ds.items["image"].to_pylist()
    images = pa.array([None if i % 3 == 0 else k for i, k in enumerate(keys)], pa.string())
    items = ds.items.set_column(ds.items.column_names.index("image"), "image", images)
    categories = [None if i == 1 else c for i, c in enumerate(items["category"].to_pylist())]
    items = items.set_column(items.column_names.index("category"), "category", pa.array(categories, pa.string()))
    data = root / "shop"
    save_dataset(dataclasses.replace(ds, items=items, root=None), str(data),
                 extra=lambda tmp: shutil.copytree(root / "drawn" / "images", tmp / "images"))
    return str(data)


@pytest.fixture(scope="module")
def client(shop):
    with TestClient(catalogue_app(shop, trust_loopback=True), base_url="http://127.0.0.1", client=("127.0.0.1", 5000)) as c:
        yield c


def test_info_says_browse_and_counts_the_catalogue(client, shop):
    info = client.get("/shop/api/info").json()
    assert info["mode"] == "browse" and info["items"] == 100 and info["with_picture"] == 66
    assert info["shoppers"] == 60 and sum(c["items"] for c in info["categories"]) == 99  # one has none
    assert sum(c["with_picture"] for c in info["categories"]) == 65  # the item without a category has one
    assert info["categories_total"] == 12
    counts = [c["items"] for c in info["categories"]]
    assert len(counts) == 12 and counts == sorted(counts, reverse=True)
    assert client.get("/healthz").json() == {"status": "ok", "mode": "browse"}


def test_catalogue_pages_filter_by_category_and_picture(client):
    everything = client.get("/shop/api/catalogue", params={"limit": 100}).json()
    ids = [c["item_id"] for c in everything["items"]]
    assert everything["total"] == 100 and len(set(ids)) == 100
    pages = [client.get("/shop/api/catalogue", params={"offset": o, "limit": 40}).json() for o in (0, 40, 80)]
    assert [c["item_id"] for p in pages for c in p["items"]] == ids  # catalogue order, no gaps
    assert [len(p["items"]) for p in pages] == [40, 40, 20] and {p["total"] for p in pages} == {100}
    pictured = client.get("/shop/api/catalogue", params={"limit": 100, "pictured": "true"}).json()
    assert pictured["total"] == 66 and all(c["image"] == f"/shop/images/{c['item_id']}" for c in pictured["items"])
    assert [c["item_id"] for c in pictured["items"]] == [c["item_id"] for c in everything["items"] if c["image"]]
    assert everything["items"][1]["category"] is None
    category = everything["items"][0]["category"]
    one = client.get("/shop/api/catalogue", params={"limit": 100, "category": category}).json()
    assert one["total"] == sum(c["category"] == category for c in everything["items"]) > 0
    assert {c["category"] for c in one["items"]} == {category}
    both = client.get("/shop/api/catalogue", params={"limit": 100, "category": category, "pictured": True}).json()
    assert both["total"] == sum(1 for c in one["items"] if c["image"])
    nothing = client.get("/shop/api/catalogue", params={"category": "no such category"}).json()
    assert nothing == {"total": 0, "offset": 0, "items": []}
    beyond = client.get("/shop/api/catalogue", params={"offset": 1000}).json()
    assert beyond["total"] == 100 and beyond["items"] == []


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 101}, {"offset": -1}, {"offset": "x"},
                                    {"pictured": "maybe"}, {"category": "c" * 501}])
def test_bad_paging_is_a_422_naming_the_field(client, params):
    r = client.get("/shop/api/catalogue", params=params)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == next(iter(params))


def test_customers_history_and_pictures(client, shop):
    users = client.get("/shop/api/users", params={"limit": 100}).json()["users"]
    assert len(users) == 60
    order = [(-u["history"], -u["with_picture"]) for u in users]
    assert order == sorted(order)  # the longest histories first, then the most pictured
    first = users[0]
    history = client.get(f"/shop/api/users/{first['user_id']}/history", params={"limit": 50}).json()["items"]
    assert len(history) == first["history"] and sum(bool(c["image"]) for c in history) == first["with_picture"]
    assert client.get("/shop/api/users/nobody/history").status_code == 404
    card = next(c for c in history if c["image"])
    picture = client.get(card["image"])
    key = card["image_key"]
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/jpeg"
    assert picture.content == Path(shop, key).read_bytes()
    bare = next(c for c in client.get("/shop/api/catalogue").json()["items"] if not c["image"])
    assert client.get(f"/shop/images/{bare['item_id']}").status_code == 404
    for bad in ("/shop/images/..%2Fdataset.json", "/shop/images/images%2F0.jpg", "/shop/images/nope"):
        assert client.get(bad).status_code == 404, bad


def test_the_page_is_served_and_the_api_it_does_not_have_is_absent(client):
    page = client.get("/shop")
    assert page.status_code == 200 and 'id="catalogue"' in page.text
    assert client.get("/shop/static/shop.js").status_code == 200
    assert client.post("/recommend", json={"k": 4}).status_code == 404
    assert client.post("/feedback", json={}).status_code == 404
    assert client.post("/items", json={"item_id": "x"}).status_code == 404
    assert client.get("/shop/api/stats").json()["kept"] is False  # nothing counted: no live panel
    assert client.get("/openapi.json").status_code == 404 and client.get("/docs").status_code == 404


def test_the_same_guard_as_the_app(shop, tmp_path):
    with TestClient(catalogue_app(shop, trust_loopback=True), client=("203.0.113.7", 5000)) as remote:
        assert remote.get("/shop").status_code == 200  # the page and pictures are open
        refused = remote.get("/shop/api/catalogue")
        assert refused.status_code == 401 and "loopback" in refused.json()["detail"]
    with TestClient(catalogue_app(shop), base_url="http://127.0.0.1", client=("127.0.0.1", 5000)) as untrusted:
        assert untrusted.get("/shop").status_code == 200
        refused = untrusted.get("/shop/api/catalogue")  # no keys, loopback not trusted: nothing
        assert refused.status_code == 401 and "trust_loopback" in refused.json()["detail"]
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"shopper {SHOP}\n")
    with TestClient(catalogue_app(shop, ApiKeys.load(str(keys_file))), client=("203.0.113.7", 5000)) as keyed:
        assert keyed.get("/shop/api/info").status_code == 401
        assert keyed.get("/shop/api/info", headers={"x-api-key": "wrong"}).status_code == 401
        assert keyed.get("/shop/api/info", headers={"x-api-key": SHOP}).json()["mode"] == "browse"
    with pytest.raises(DataError, match="--host 0.0.0.0: listening beyond loopback needs API keys"):
        listen_keys("0.0.0.0", None)
    assert listen_keys("0.0.0.0", str(keys_file)).configured and not listen_keys("127.0.0.1", None).configured
    empty = tmp_path / "empty-secret"
    empty.write_text("")
    with pytest.raises(DataError, match=f"--api-keys-file: api_keys_file: {empty} holds no keys"):
        listen_keys("127.0.0.1", str(empty))
    with pytest.raises(DataError, match="no such dataset directory"):
        catalogue_app(str(tmp_path / "missing"))


class _Grown(CatalogueOnly):
    """The shop as a live app sees it: items added at runtime, each learnt from the registry."""

    def __init__(self, data: str):
        super().__init__(CatalogueArgs(data, image_root=data))
        self.records: list[dict] = []

    def add(self, record: dict) -> None:
        self.records.append(record)
        self.catalog.add(record)

    async def since(self, n: int) -> list[dict]:
        return self.records[n:]


def test_items_added_at_runtime_are_shelved_with_their_pictures(shop):
    grown = _Grown(shop)
    window = ShopPage.build(grown)  # live
    grown.add({"item_id": "new-lamp", "category": "lamp", "image": "images/1.jpg", "price": 0.0305})
    asyncio.run(window.learn_runtime_images())
    info = window.info()
    assert info["mode"] == "live" and info["items"] == 101 and info["with_picture"] == 67
    lamp = next(c for c in info["categories"] if c["name"] == "lamp")
    assert window.card(100)["image"] == "/shop/images/new-lamp" and window.card(100)["price"] == 0.0305
    assert window.shelf("lamp", True)[-1] == 100
    grown.add({"item_id": "new-kind", "category": "kite"})  # no picture, a new category
    asyncio.run(window.learn_runtime_images())
    assert window.info()["items"] == 102 and window.info()["with_picture"] == 67
    assert window.shelf("kite", False).tolist() == [101] and window.shelf("kite", True).tolist() == []
    again = next(c for c in window.info()["categories"] if c["name"] == "lamp")
    assert again == lamp and lamp["with_picture"] == sum(window._has_image(int(i)) for i in window.shelf("lamp", False))


def test_info_lists_the_largest_categories_and_says_how_many_more(shop, monkeypatch):
    import serving.edge.shop

    monkeypatch.setattr(serving.edge.shop, "MAX_CATEGORIES", 3)
    info = ShopPage.build(CatalogueOnly(CatalogueArgs(shop)), live=False).info()
    full = ShopPage.build(CatalogueOnly(CatalogueArgs(shop)), live=False)
    counts = sorted((-int((full._columns()[1] == code).sum()), name) for name, code in full._columns()[2].items())
    assert [c["name"] for c in info["categories"]] == [name for _, name in counts[:3]]
    assert info["categories_total"] == 12


def test_every_route_of_the_browse_app_but_the_open_ones_needs_a_key(shop, tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"shopper {SHOP}\n")
    app = catalogue_app(shop, ApiKeys.load(str(keys_file)), trust_loopback=True)  # keys win over the trust
    with TestClient(app, base_url="http://127.0.0.1", client=("127.0.0.1", 5000)) as client:
        seen = check_route_table(client, app.routes, SHOP, None)
    assert {"/shop", "/shop/images/{item_id}", "/healthz", "/shop/api/catalogue"} <= seen
    assert len(seen - OPEN) >= 6  # the page's helpers, each asked without a key


def test_the_picture_cache_holds_at_most_its_bytes(shop):
    window = ShopPage.build(CatalogueOnly(CatalogueArgs(shop, image_cache_bytes=6000)), live=False)
    ids = [window.service.catalog.item_ids[i] for i in np.flatnonzero(window.pictured)[:20]]
    sizes = [len(asyncio.run(window.image(x))[0]) for x in ids]
    assert sum(sizes) > 3 * 6000  # more than the cap passed through it
    assert 0 < window.cache.total <= 6000 and window.cache.total == sum(len(p[0]) for p in window.cache.entries.values())
    assert ids[-1] in window.cache.entries and ids[0] not in window.cache.entries  # the oldest went first
