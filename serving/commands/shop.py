"""The catalogue-only shop page: ``raycart shop --data DIR`` shows a prepared dataset's catalogue,
its customers' purchases and its pictures in the shop page, **without a model** -- for a dataset
no model is trained on yet (the H&M sample: about one purchase per customer), or to look at a shop's
catalogue before training.

One plain FastAPI app (no Ray) with the shop page's router (:mod:`serving.edge.shop`) over a
:class:`CatalogueOnly`: the catalogue and histories of the dataset (:class:`~serving.core.catalog.Catalog`),
no recommendations, no feedback, no items added at runtime. The page asks ``/shop/api/info``, sees
``mode: browse`` and shows the catalogue by category (``/shop/api/catalogue``) and a picked
customer's items. The same :class:`~serving.edge.security.Guard` as the app: without API keys it
answers nothing that needs a role unless loopback is trusted, which ``raycart shop`` does without
``--api-keys-file`` (then loopback clients only); it refuses a non-loopback ``--host`` without keys.

Example::

    raycart data prepare --source hm --input ../shared/data/hm --output data/hm
    raycart shop --data data/hm            # then open http://127.0.0.1:8000/shop
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass

from fastapi import FastAPI

from serving.core.catalog import Catalog
from serving.core.metrics import NO_METRICS
from serving.core.schemas import AppArgs
from serving.edge.security import ApiKeys, Guard, GuardSettings
from serving.edge.shop import ShopPage
from serving.edge.shop import router as shop_page

log = logging.getLogger(__name__)

_DEFAULTS = AppArgs.model_fields


@dataclass(frozen=True)
class CatalogueArgs:
    """Where the catalogue and its pictures are (the picture limits are the app's)."""

    data_dir: str
    image_root: str | None = None  # no items are added here, so no runtime pictures
    image_max_bytes: int = _DEFAULTS["image_max_bytes"].default
    image_max_pixels: int = _DEFAULTS["image_max_pixels"].default
    image_cache_bytes: int = _DEFAULTS["image_cache_bytes"].default


class CatalogueOnly:
    """A dataset's catalogue shown without a model: the :class:`~serving.edge.shop.ShopSource`
    of a catalogue-only shop page. It has no items added at runtime and counts no metrics."""

    def __init__(self, args: CatalogueArgs):
        self.args = args
        self.catalog = Catalog.load(args.data_dir)
        self.metrics = NO_METRICS

    @property
    def backend(self) -> CatalogueOnly:
        return self

    async def since(self, n: int) -> list[dict]:
        return []  # nothing is added at runtime

    async def unknown(self, ids: list[str]) -> list[str]:
        return [x for x in ids if x not in self.catalog.item_index]


def catalogue_app(data_dir: str, keys: ApiKeys | None = None, trust_loopback: bool = False) -> FastAPI:
    """The catalogue-only shop page over the prepared dataset ``data_dir``, behind ``keys`` (None: no
    keys: the helpers are refused unless ``trust_loopback``, then loopback clients only)."""
    app = FastAPI(title="Raycart shop page (browse only)", openapi_url=None, docs_url=None, redoc_url=None)
    app.add_middleware(Guard, settings=GuardSettings(keys=keys or ApiKeys(), trust_loopback=trust_loopback))
    app.include_router(shop_page)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "mode": "browse"}

    app.state.shop_page = ShopPage.build(CatalogueOnly(CatalogueArgs(data_dir)), live=False)
    return app


def shop(args: argparse.Namespace) -> int:
    import uvicorn

    from serving.commands.serve import listen_keys
    from training.common import storage
    keys = listen_keys(args.host, args.api_keys_file)
    # without keys, local use: loopback is trusted (listen_keys refused any other --host)
    app = catalogue_app(storage.absolute(args.data), keys, trust_loopback=not keys.configured)  # no dataset: a DataError
    info = app.state.shop_page.info()
    log.info(f"raycart shop: browsing {args.data} ({info['items']:,} items, {info['with_picture']:,} with a picture, "
          f"{info['shoppers']:,} customers; no model) on http://{args.host}:{args.port}/shop (Ctrl-C to stop)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from serving.commands.serve import add_listen_args

    p = sub.add_parser("shop", help="browse a prepared dataset in the shop page, without a model",
                       description="Serve the shop page over a prepared dataset (catalogue, customers, "
                                   "pictures) without a model, bound to 127.0.0.1, until Ctrl-C.")
    p.add_argument("--data", required=True, help="a prepared dataset (raycart data prepare), local or s3://")
    add_listen_args(p)
    p.set_defaults(func=shop)
