"""The shop page's Ray-free parts: the live panel's :class:`Tally`, the open routes of the Guard,
the page and its fixed list of assets, pictures by id over the live service (one 404 for every
miss, no registry call for an id known to be unknown) (the browser test is
tests/integration/test_shop_page.py; one basename for both would make pytest refuse to collect
them in one session: no __init__.py)."""

from __future__ import annotations

import asyncio
import io
import re

import numpy as np
import pytest
from fastapi import FastAPI, HTTPException
from PIL import Image
from starlette.testclient import TestClient
from test_service import App
from test_serving_metrics import Recorded

from serving.core.images import ImageSource
from serving.core.metrics import Metrics, policy_family
from serving.edge.security import required_role
from serving.edge.shop import NO_IMAGE, STATIC, ShopPage, Tally, router


def test_tally_counts_what_the_panel_shows_and_forwards_everything(tmp_path):
    inner = Recorded()
    tally = Tally(inner)
    app = App(tmp_path, policy_epsilon=0.0, policy_alpha=0.0, policy_diversity=0.0, explore_candidates=0,
              stale_alpha=0.0)
    app.service.metrics = Metrics(tally)
    body = app.recommend(user_id="u1", k=4)
    shown = [o["item_id"] for o in body["items"]]
    app.feedback(request_id=body["request_id"], item_id=shown[0], event="click")
    app.feedback(request_id=body["request_id"], item_id=shown[1], event="purchase")
    for endpoint, status, seconds in [("/recommend", 200, 0.010), ("/feedback", 200, 0.002),
                                      ("/feedback", 404, 0.001), ("other", 200, 5.0)]:  # "other": pictures, page
        app.service.metrics.request(endpoint, status, seconds)
    s = tally.summary()
    assert (s["requests"], s["errors"], s["latency_window"]) == (3, 1, 3)
    assert s["p50_ms"] == 2.0  # the middle of 1, 2 and 10 ms; the 5 s picture request is not an API call
    (row,) = s["by_version"]
    assert row["policy_version"] == policy_family(body["policy_version"]) and row["impressions"] == 4
    assert row["clicks"] == 1 and row["ctr"] == 0.25 and row["reward"] == 6.0 and row["reward_per_impression"] == 1.5
    assert inner.get("raycart_impressions_total", model_version=row["model_version"],
                     policy_version=row["policy_version"]) == 4  # Prometheus still gets every number


def test_an_empty_tally_has_no_latency():
    s = Tally().summary()
    assert s["requests"] == 0 and s["p50_ms"] is None and s["by_version"] == []


def test_the_page_assets_and_pictures_are_open_and_the_helpers_are_not():
    for path in ("/shop", "/shop/static/shop.js", "/shop/images/SKU1"):
        assert required_role("GET", path) is None, path
    for path in ("/shop/api/users", "/shop/api/stats", "/shop/apiX", "/shopping", "/shop/static"):
        assert required_role("GET", path) == "shopper", path


def test_the_page_and_only_its_listed_assets_are_served():
    from serving.edge.http import api

    with TestClient(api, base_url="http://127.0.0.1", client=("127.0.0.1", 5000)) as client:
        page = client.get("/shop")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        for asset in re.findall(r'(?:href|src)="(/shop/static/[^"]+)"', page.text):
            r = client.get(asset)
            assert r.status_code == 200 and r.text == (STATIC / asset.rsplit("/", 1)[1]).read_text(), asset
        for bad in ("/shop/static/index.html", "/shop/static/..%2F..%2Fhttp.py", "/shop/static/%2Fetc%2Fpasswd"):
            assert client.get(bad).status_code == 404, bad


def test_the_page_puts_item_text_in_with_text_content_only():
    js = (STATIC / "shop.js").read_text()
    assert "innerHTML" not in js and "insertAdjacentHTML" not in js and "document.write" not in js
    html = (STATIC / "index.html").read_text()
    assert not re.search(r'(?:src|href)="(?:https?:)?//', html)  # nothing from another host (offline)


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def pictured(tmp_path):
    """The live service's catalogue (i0, i1, ...) with pictures: i0's is there, i1's file is
    missing, i2 has none, i3's is no image; runtime items' pictures under ``runtime/``."""
    app = App(tmp_path)
    data, runtime = tmp_path / "data", tmp_path / "runtime"
    for folder in (data, runtime):
        folder.mkdir()
        (folder / "p.png").write_bytes(_png())
    (data / "bad.png").write_text("not a picture")
    n = app.service.catalog.num_items
    keys = ["p.png", "gone.png", None, "bad.png"] + [None] * (n - 4)
    window = ShopPage(app.service, ImageSource(str(data)), ImageSource(str(runtime)), keys,
                    np.array([k is not None for k in keys]), live=False)
    calls = []
    since = app.backend.since

    async def counted(n: int) -> list[dict]:  # the item registry, counted
        calls.append(n)
        return await since(n)

    app.backend.since = counted
    return app, window, calls


def _status(window: ShopPage, item_id: str) -> int | tuple[int, str]:
    try:
        asyncio.run(window.image(item_id))
    except HTTPException as exc:
        return exc.status_code, exc.detail
    return 200


def test_every_missing_picture_answers_the_same_404(pictured):
    """An unknown id, an item without a picture, a missing file and a file that is no image cannot
    be told apart (no probing which ids exist or which files are missing)."""
    _, window, _ = pictured
    app = FastAPI()
    app.include_router(router)
    app.state.shop_page = window
    with TestClient(app) as client:
        ok = client.get("/shop/images/i0")
        assert ok.status_code == 200 and ok.headers["content-type"] == "image/png"
        answers = [client.get(f"/shop/images/{x}") for x in ("no-such-id", "i1", "i2", "i3")]
    assert {(r.status_code, r.content, r.headers["content-type"]) for r in answers} == \
        {(404, f'{{"detail":"{NO_IMAGE}"}}'.encode(), "application/json")}


def test_an_unknown_id_asked_again_costs_no_registry_call(pictured):
    app, window, calls = pictured

    def later() -> None:  # past FORCED_SYNC_S since the last registry call
        app.service.synced_at -= 1.0
        app.service.sync_began -= 1.0

    for _ in range(5):
        assert _status(window, "no-such-id") == (404, NO_IMAGE)
    assert len(calls) == 1  # the first ask looked in the registry (an item of another replica?)
    assert _status(window, "other-id") == (404, NO_IMAGE) and len(calls) == 1  # a new id at once: no call either
    later()
    assert _status(window, "late") == (404, NO_IMAGE) and len(calls) == 2
    app.backend.registry.store.add({"item_id": "late", "image": "p.png", "attributes": ["a0"]})
    later()
    assert _status(window, "late") == (404, NO_IMAGE) and len(calls) == 2  # remembered (until its ttl)
    asyncio.run(app.service.sync(force=True))  # the catalogue grows: what was unknown is asked again
    assert len(calls) == 3
    assert _status(window, "late") == 200 and len(calls) == 4  # known now; one call to learn its picture's key
    later()
    assert _status(window, "no-such-id") == (404, NO_IMAGE) and len(calls) == 5
    later()
    assert _status(window, "no-such-id") == (404, NO_IMAGE) and len(calls) == 5


def test_a_keyed_live_shop_does_not_list_shoppers_or_read_their_histories(tmp_path):
    import numpy as np

    from serving.core.images import ImageSource
    from serving.edge import http
    from serving.edge.security import ApiKeys
    from serving.edge.shop import ShopPage

    keys = tmp_path / "keys"
    keys.write_text("shopper shopper-key-0123456789\n")
    app = App(tmp_path)
    n = app.service.catalog.num_items
    edge = http.EdgeLog(app.log)
    try:
        for keyed in (False, True):
            api = http.configure(http.Runtime(app.service, edge),
                                 app.args.model_copy(update={"api_keys_file": str(keys) if keyed else None,
                                                             "trust_loopback": True}))
            api.state.shop_page = ShopPage(app.service, ImageSource(None), ImageSource(None), [None] * n,
                                           np.zeros(n, dtype=bool))  # no dataset folder to build one from
            client = TestClient(api, base_url="http://127.0.0.1", client=("127.0.0.1", 5000),
                                headers={"X-API-Key": "shopper-key-0123456789"})
            listed, seen = client.get("/shop/api/users"), client.get("/shop/api/users/u1/history")
            assert client.get("/shop/api/info").json()["shopper_picker"] is not keyed
            if keyed:
                assert listed.status_code == seen.status_code == 403 and "keyless demo" in listed.json()["detail"]
            else:
                assert listed.status_code == seen.status_code == 200 and listed.json()["users"]
                assert seen.json()["user_id"] == "u1"
    finally:
        edge.stop.set()
        http.GUARD.keys = ApiKeys()


def test_the_page_hides_its_picker_where_the_app_lists_no_shoppers():
    js, html = (STATIC / "shop.js").read_text(), (STATIC / "index.html").read_text()
    assert 'id="shopper-picker"' in html and '$("shopper-picker").hidden' in js
    assert "info.shopper_picker" in js and "x-shopper-token" in js and "rec.session_token" in js
