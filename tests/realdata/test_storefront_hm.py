"""The shop window's pictures on the real H&M sample: every article with a photo is served by its
item id from the prepared dataset's own folder (the real JPEG, byte for byte), an article without
one is a 404, and no id reaches a path. (Serving H&M recommendations needs a model trained on it;
this checks the catalogue side the page shows.)"""

import asyncio
from types import SimpleNamespace

import pytest
from fastapi import HTTPException

from serving.catalog import Catalog
from serving.schemas import AppArgs
from serving.storefront import Window
from training.data.cli import prepare


class _Service:
    """What :class:`Window` reads from the service: its arguments, catalogue and id check."""

    def __init__(self, data: str):
        self.args = AppArgs(model_dir="(none)", data_dir=data)
        self.catalog = Catalog.load(data)
        self.stages = SimpleNamespace(since=None)

    async def unknown(self, ids):
        return [x for x in ids if x not in self.catalog.item_index]


def test_hm_photos_are_served_by_item_id(shared, tmp_path):
    data = str(tmp_path / "hm")
    prepare("hm", str(shared / "data/hm"), data)
    window = Window.build(_Service(data))
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
