"""The shop page on the real H&M sample. Every article with a photo is served by its item id from
the prepared dataset's own folder (the real JPEG, byte for byte), an article without one is a 404,
and no id reaches a path. The catalogue-only shop page (``raycart shop``: no model, since the sample
holds about one purchase per customer) shows all 100 photos in Chromium, by category, with a
customer's purchases, on a desktop and a phone viewport. Screenshots go to
``$RAYCART_SHOP_SCREENSHOTS`` when set (README's pictures), else to the test's tmp folder."""

import asyncio
import subprocess
import sys
import time

import pytest
import requests
from browser import PHONE, launched, screenshot, screenshots, watched
from fastapi import HTTPException
from netwatch import LOOPBACK, listeners
from PIL import Image

from serving.commands.shop import CatalogueArgs, CatalogueOnly
from serving.edge.shop import ShopPage
from serving.state.redis_server import free_port
from training.data.prepare import prepare

pytestmark = pytest.mark.realdata


def test_hm_photos_are_served_by_item_id(shared, tmp_path):
    data = str(tmp_path / "hm")
    prepare("hm", str(shared / "data/hm"), data)
    window = ShopPage.build(CatalogueOnly(CatalogueArgs(data)), live=False)
    with_photo = [(i, k) for i, k in enumerate(window.keys) if k is not None]
    assert len(with_photo) == 100
    for item, key in with_photo:
        item_id = window.service.catalog.item_ids[item]
        body, kind = asyncio.run(window.image(item_id))
        assert kind == "image/jpeg" and body == (shared / "data/hm/images" / key.split("/")[-1]).read_bytes()
        assert window.card(item)["image"] == f"/shop/images/{item_id}"
    without = next(i for i, k in enumerate(window.keys) if k is None)
    assert window.card(without)["image"] is None
    for bad in (window.service.catalog.item_ids[without], "../dataset.json", "images/0255396018.jpg"):
        with pytest.raises(HTTPException) as err:
            asyncio.run(window.image(bad))
        assert err.value.status_code == 404


SHELF = """() => ({
    range: document.getElementById('shelf-range').textContent,
    items: [...document.querySelectorAll('#catalogue .card')].map(c => c.dataset.itemId),
    categories: [...document.querySelectorAll('#catalogue .card .meta')].map(m => m.textContent.split(' · ')[0]),
    sizes: [...document.querySelectorAll('#catalogue .card')].map(c => {
        const i = c.querySelector('img'); return i ? [i.naturalWidth, i.naturalHeight] : null; }),
    tiles: document.querySelectorAll('#catalogue .card .noimg').length,
    broken: [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src),
    last: document.getElementById('shelf-next').disabled,
})"""
SETTLED = "[...document.images].every(i => i.complete)"


def _turned(page, offset: int) -> dict:
    page.wait_for_function(f"document.getElementById('catalogue').dataset.offset === '{offset}' && {SETTLED}",
                           timeout=30_000)
    return page.evaluate(SHELF)


def test_hm_catalogue_in_chromium_shows_every_photo(shared, tmp_path):
    data = str(tmp_path / "hm")
    prepare("hm", str(shared / "data/hm"), data)
    photos = {p.stem: p for p in (shared / "data/hm/images").iterdir()}
    shots = screenshots(tmp_path)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    shop = subprocess.Popen([sys.executable, "-m", "training.cli", "shop", "--data", data, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 60
        while True:
            assert shop.poll() is None and time.time() < deadline, shop.stdout.read() if shop.poll() is not None else ""
            try:
                if requests.get(url + "/healthz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.3)
        held = [local for local, cmd in listeners() if "training.cli shop" in cmd]
        assert held and all(local.startswith(LOOPBACK) for local in held), held
        customer = requests.get(url + "/shop/api/users", params={"limit": 1}, timeout=10).json()["users"][0]
        assert customer["history"] == 2 and customer["with_picture"] >= 1, customer
        errors: list[str] = []
        with launched() as browser:
            page = watched(browser, errors)
            page.goto(url + "/shop", wait_until="load", timeout=30_000)
            first = _turned(page, 0)
            assert "1,000 items (100 with a picture) and 4,946 customers" in page.locator("#mode-note").text_content()
            assert page.locator("#catalogue-box").is_visible() and page.locator("#mode-note").is_visible()
            for live in ("#refresh", "#model-version", "#stat-requests", "#add-form"):  # nothing that needs a model
                assert not page.locator(live).is_visible(), live
            seen, offset = [], 0
            while True:  # every page of the pictured catalogue: each photo shown at its own size
                shelf = first if offset == 0 else _turned(page, offset)
                assert shelf["broken"] == [] and shelf["tiles"] == 0, shelf
                for item, size in zip(shelf["items"], shelf["sizes"], strict=True):
                    with Image.open(photos[item]) as img:
                        assert size == list(img.size), (item, size, img.size)
                seen += shelf["items"]
                if shelf["last"]:
                    break
                offset += 24
                page.click("#shelf-next")
            assert first["range"] == "1-24 of 100" and len(first["items"]) == 24
            catalogue = requests.get(url + "/shop/api/catalogue", params={"pictured": "true", "offset": offset},
                                     timeout=10).json()  # the page shown now: the last one
            prices = {c["item_id"]: c["price"] for c in catalogue["items"]}
            assert shelf["items"] == list(prices)
            shown_prices = page.locator("#catalogue .card .price").all_text_contents()
            assert shown_prices == ["" if p is None else f"{p:#.3g}" for p in prices.values()], shown_prices
            assert any(shown_prices)
            assert len(seen) == 100 and set(seen) == set(photos)

            page.select_option("#shelf-category", "Trousers")
            trousers = _turned(page, 0)
            assert set(trousers["categories"]) == {"Trousers"} and trousers["broken"] == []
            page.uncheck("#shelf-pictured")
            page.wait_for_function("document.getElementById('shelf-range').textContent === '1-24 of 111' && "
                                   + SETTLED, timeout=30_000)
            every = page.evaluate(SHELF)
            assert set(every["categories"]) == {"Trousers"} and every["tiles"] > 0 and every["broken"] == []
            assert len(every["items"]) == 24 and every["tiles"] + sum(s is not None for s in every["sizes"]) == 24

            assert page.locator("#shelf-category option:checked").text_content() == "Trousers (111)"
            page.select_option("#shelf-category", "")
            page.check("#shelf-pictured")
            page.wait_for_function("document.getElementById('shelf-range').textContent === '1-24 of 100' && "
                                   + SETTLED, timeout=30_000)
            assert page.evaluate(SHELF)["items"] == first["items"]
            page.select_option("#shopper", customer["user_id"])
            page.wait_for_function(f"document.querySelectorAll('#history .thumb').length === 2 && {SETTLED}")
            assert page.locator("#history img").count() == customer["with_picture"]
            assert customer["user_id"] in page.locator("#history-title").text_content()
            assert page.evaluate(SHELF)["broken"] == []
            screenshot(page, shots / "hm-desktop.png")

            phone = watched(browser, errors, phone=True)
            phone.goto(url + "/shop", wait_until="load", timeout=30_000)
            assert _turned(phone, 0)["broken"] == []
            width = phone.evaluate("document.documentElement.scrollWidth")
            assert width <= PHONE["width"], f"the page scrolls sideways on a phone: {width}px"
            screenshot(phone, shots / "hm-phone.png")
        assert errors == [], errors
    finally:
        shop.terminate()
        shop.wait(timeout=30)
