"""The shop page: a web page over the live app (``GET /shop``), for people who want to *see* it.

A static page (``serving/edge/shop_page/``: HTML, CSS, vanilla JS; no build step, no CDN, no external
font) that is a client of the public API: it asks ``POST /recommend``, sends ``POST /feedback``
(view, add to cart, buy), ``GET /items/{id}/similar`` and, from its admin form, ``POST /items``
with the keys the person types in. This router adds only what the page needs beside the API:

* ``GET /shop``, ``GET /shop/static/{name}`` -- the page and its two assets (a fixed list);
* ``GET /shop/images/{item_id}`` -- an item's picture, found **by item id only**: a dataset item's
  ``image`` key under the dataset's folder, a runtime item's key under ``image_root``, both read
  through :class:`~serving.core.images.ImageSource` (no client-supplied path reaches the disk). Kept in
  an :class:`~serving.edge.image_cache.ImageCache` bounded in bytes (``image_cache_bytes``); an unknown
  id is remembered (:class:`~serving.edge.image_cache.UnknownIds`), so asking again costs no item-registry
  call; an unknown id, an item without a picture and a picture that cannot be read all answer the
  same 404 (a client cannot probe which ids exist or which files are missing);
* ``GET /shop/api/info`` (``live`` or ``browse``, the catalogue's size and categories),
  ``GET /shop/api/users`` (known shoppers to pick from), ``GET /shop/api/users/{id}/history``,
  ``GET /shop/api/items?ids=a,b`` (item cards: title, price, category, image URL),
  ``GET /shop/api/catalogue`` (a page of the catalogue, by category, optionally only items with a
  picture) and ``GET /shop/api/stats`` (the live panel: requests, p50 latency, impressions, CTR and
  reward by model and policy version, as counted by *this* Ingress replica through :class:`Tally`).

The same router serves the catalogue-only shop page of :mod:`serving.commands.shop` (``raycart shop``: a
prepared dataset's catalogue, customers and pictures without a model); the page asks
``/shop/api/info`` which it is and shows recommendations only over the live app.

The page, its assets and the images are open (the Guard lets them through: product pictures are
public); the ``/shop/api`` helpers need a shopper key like the API itself when keys are on. The
shopper picker (``/shop/api/users`` and a user's history) is for the keyless demo and the
catalogue-only shop page: over a live app with API keys or shopper tokens (the app's
``shoppers_private()``) it answers 403, since a shopper key would otherwise list the shop's
customers and read their histories; ``/shop/api/info`` says ``shopper_picker: false`` and the
page then shows an anonymous session only.
Plain FastAPI, no Ray.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from serving.core.images import ImageRefused, ImageSource
from serving.core.metrics import Metrics, MetricSpec, Sink
from serving.edge.image_cache import ImageCache, UnknownIds

if TYPE_CHECKING:  # serving.edge.http imports this module; these are only types here
    from serving.core.catalog import Catalog

STATIC = Path(__file__).with_name("shop_page")
ASSETS = {"shop.css": "text/css; charset=utf-8", "shop.js": "text/javascript; charset=utf-8"}
MAGIC = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"), (b"GIF8", "image/gif"),
         (b"BM", "image/bmp"))
IMAGE_CACHE_BYTES = 64 * 1024 * 1024  # pictures kept per replica unless configured (AppArgs.image_cache_bytes)
MAX_CARDS = 100
NO_IMAGE = "no image for this id"  # the one 404 of /shop/images: unknown id, no picture, unreadable file

router = APIRouter(prefix="/shop", tags=["shop page"])  # its helpers are documented (and fuzzed); the page is not
MAX_SHOPPERS = 100  # the most shoppers the picker may list (GET /shop/api/users?limit=)
MAX_CATEGORIES = 200  # the most categories GET /shop/api/info lists (the largest first)


class PictureArgs(Protocol):
    """Where the window finds pictures: :class:`~serving.core.schemas.AppArgs` has these fields."""

    @property
    def data_dir(self) -> str: ...
    @property
    def image_root(self) -> str | None: ...
    @property
    def image_max_bytes(self) -> int: ...
    @property
    def image_max_pixels(self) -> int: ...
    @property
    def image_cache_bytes(self) -> int: ...


class RuntimeRecords(Protocol):
    async def since(self, n: int) -> list[dict]: ...


class ShopSource(Protocol):
    """What the window reads from what it shows: the live app's
    :class:`~serving.core.service.RecommendService`, or :class:`serving.commands.shop.CatalogueOnly` (no model)."""

    @property
    def args(self) -> PictureArgs: ...
    @property
    def catalog(self) -> Catalog: ...
    @property
    def backend(self) -> RuntimeRecords: ...
    @property
    def metrics(self) -> Metrics: ...
    async def unknown(self, ids: list[str]) -> list[str]: ...


class Tally:
    """A :class:`~serving.core.metrics.Sink` that keeps what the live panel shows in memory (this
    replica's counts since it started) and hands every number on to ``inner`` (Ray Serve's metrics
    in a replica). Prometheus stays the place for totals across replicas; this needs no scraper.

    Example::

        tally = Tally(RaySink()); metrics = Metrics(tally)
        metrics.request("/recommend", 200, 0.012); tally.summary()["requests"]  # 1
    """

    API = {"/recommend", "/feedback", "/items", "/items/{item_id}/similar"}

    def __init__(self, inner: Sink | None = None, window: int = 2000):
        self.inner = inner
        self.latencies: collections.deque[float] = collections.deque(maxlen=window)
        self.requests = 0
        self.errors = 0
        self.versions: dict[tuple[str, str], dict[str, float]] = {}
        self.lock = threading.Lock()  # stages record from worker threads too

    def record(self, spec: MetricSpec, value: float, labels: dict[str, str]) -> None:
        if self.inner is not None:
            self.inner.record(spec, value, labels)
        with self.lock:
            if spec.name == "raycart_request_latency_seconds" and labels.get("endpoint") in self.API:
                self.latencies.append(value)
            elif spec.name == "raycart_requests_total" and labels.get("endpoint") in self.API:
                self.requests += 1
                self.errors += labels.get("status", "2xx")[0] in "45"
            elif spec.name in ("raycart_impressions_total", "raycart_clicks_total", "raycart_reward_total"):
                key = (labels.get("model_version", "?"), labels.get("policy_version", "?"))
                row = self.versions.setdefault(key, {"impressions": 0.0, "clicks": 0.0, "reward": 0.0})
                row[spec.name.split("_")[1]] += value

    def summary(self) -> dict:
        with self.lock:
            lat = sorted(self.latencies)
            rows = [{"model_version": m, "policy_version": p, "impressions": int(r["impressions"]),
                     "clicks": int(r["clicks"]), "reward": r["reward"],
                     "ctr": r["clicks"] / r["impressions"] if r["impressions"] else None,
                     "reward_per_impression": r["reward"] / r["impressions"] if r["impressions"] else None}
                    for (m, p), r in sorted(self.versions.items())]
            return {"kept": True, "requests": self.requests, "errors": self.errors,
                    "p50_ms": round(lat[len(lat) // 2] * 1000, 2) if lat else None,
                    "latency_window": len(lat), "by_version": rows}


@dataclass
class ShopPage:
    """What one process needs to answer the page's helpers, built on first use from its service
    (``live``: the app's; else a browse-only catalogue, :mod:`serving.commands.shop`)."""

    service: ShopSource
    dataset: ImageSource
    runtime: ImageSource
    keys: list[str | None]  # the dataset items' image keys, by internal id
    pictured: np.ndarray  # whether each dataset item has an image key
    live: bool = True
    runtime_keys: dict[str, str | None] = field(default_factory=dict)
    cache: ImageCache = field(default_factory=lambda: ImageCache(IMAGE_CACHE_BYTES))
    unknown_ids: UnknownIds = field(default_factory=UnknownIds)  # ids that answered 404 lately
    _shoppers: list[dict] | None = None  # see shoppers()
    _shelf: tuple[tuple[int, int], np.ndarray, np.ndarray, dict[str, int]] | None = None  # see _columns()

    @classmethod
    def build(cls, service: ShopSource, live: bool = True) -> ShopPage:
        from training.data.dataset import read_table

        args = service.args
        items = read_table(args.data_dir, "items")  # the catalogue has read (and checked) the rest
        images = items["image"] if "image" in items.column_names else pa.nulls(items.num_rows, pa.string())
        return cls(service, ImageSource(args.data_dir, args.image_max_bytes, args.image_max_pixels),
                   ImageSource(args.image_root, args.image_max_bytes, args.image_max_pixels), images.to_pylist(),
                   images.is_valid().to_numpy(zero_copy_only=False), live, cache=ImageCache(args.image_cache_bytes))

    def info(self) -> dict:
        """What the page asks first: which window this is, and the catalogue's categories (the
        largest first) with how many of their items have a picture. Call
        :meth:`learn_runtime_images` first, so that the pictures of runtime items count."""
        pictured, cats, codes = self._columns()
        counts = np.bincount(cats[cats >= 0], minlength=len(codes))
        shown = np.bincount(cats[(cats >= 0) & pictured], minlength=len(codes))
        names = sorted(codes, key=lambda c: (-counts[codes[c]], c))[:MAX_CATEGORIES]
        return {"mode": "live" if self.live else "browse", "items": len(pictured), "with_picture": int(pictured.sum()),
                "shoppers": len(self.service.catalog.user_index), "categories_total": len(codes),
                "categories": [{"name": c, "items": int(counts[codes[c]]), "with_picture": int(shown[codes[c]])}
                               for c in names]}

    def shelf(self, category: str | None, pictured_only: bool) -> np.ndarray:
        """The catalogue's internal ids in catalogue order, of one category (None: all) and, with
        ``pictured_only``, only those with a picture (after :meth:`learn_runtime_images`)."""
        pictured, cats, codes = self._columns()
        keep = pictured.copy() if pictured_only else np.ones(len(pictured), dtype=bool)
        if category is not None:
            keep &= cats == codes.get(category, -2)  # -1 marks items without a category
        return np.flatnonzero(keep)

    def _columns(self) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
        """(has a picture, category code or -1, code by category) of every item, the ones added at
        runtime included; redone when the catalogue grows or a runtime item's picture is learnt."""
        cat = self.service.catalog
        stamp = (cat.num_items, len(self.runtime_keys))
        if self._shelf is None or self._shelf[0] != stamp:
            added = [self._has_image(i) for i in range(len(self.keys), cat.num_items)]
            encoded = pa.array(cat.categories, pa.string()).dictionary_encode()
            self._shelf = (stamp, np.concatenate([self.pictured, np.array(added, dtype=bool)]),
                           pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64),
                           {name: code for code, name in enumerate(encoded.dictionary.to_pylist())})
        return self._shelf[1:]

    def card(self, item: int) -> dict:
        cat = self.service.catalog
        item_id = cat.item_ids[item]
        price = float(cat.prices[item])
        return {"item_id": item_id, "title": cat.titles[item], "category": cat.categories[item],
                "price": None if price != price else price, "runtime": item >= cat.base_items,
                "image": f"/shop/images/{_quote(item_id)}" if self._has_image(item) else None,
                # the key the admin form can reuse (meaningful where image_root is the dataset's folder)
                "image_key": self.keys[item] if item < len(self.keys) else self.runtime_keys.get(item_id)}

    def shoppers(self) -> list[dict]:
        """The known shoppers with the longest histories, longest first (ties: more items with a
        picture first, then by internal id), as many as the picker may ask for; computed once per
        catalogue (its histories do not change)."""
        if self._shoppers is None:
            cat = self.service.catalog
            indptr = cat.histories.indptr
            ids = list(cat.user_index)
            sizes = indptr[1:len(ids) + 1] - indptr[:len(ids)]
            has = self.pictured
            owner = np.repeat(np.arange(len(ids)), sizes)
            pictured = np.bincount(owner, weights=has[cat.histories.items[:indptr[len(ids)]]], minlength=len(ids))
            self._shoppers = []
            for u in np.lexsort((np.arange(len(ids)), -pictured, -sizes))[:MAX_SHOPPERS].tolist():
                items = cat.histories.items[indptr[u]:indptr[u + 1]]
                top = collections.Counter(cat.categories[int(i)] for i in items).most_common(1)
                self._shoppers.append({"user_id": ids[u], "history": int(sizes[u]), "with_picture": int(pictured[u]),
                                       "top_category": top[0][0] if top else None})
        return self._shoppers

    def _has_image(self, item: int) -> bool:
        if item < len(self.keys):
            return self.keys[item] is not None
        return bool(self.runtime.root) and self.runtime_keys.get(self.service.catalog.item_ids[item]) is not None

    async def learn_runtime_images(self) -> None:
        cat = self.service.catalog
        if len(self.runtime_keys) < cat.added:
            for record in await self.service.backend.since(0):
                image = record.get("image")
                self.runtime_keys[record["item_id"]] = image if isinstance(image, str) else None

    async def image(self, item_id: str) -> tuple[bytes, str]:
        """The picture's bytes and media type; 404 :data:`NO_IMAGE` whatever the reason."""
        hit = self.cache.get(item_id)
        if hit is not None:
            return hit
        cat = self.service.catalog
        if self.unknown_ids.known_unknown(item_id, cat.num_items):
            raise HTTPException(404, NO_IMAGE)
        if await self.service.unknown([item_id]):  # may ask the item registry (items of other replicas)
            self.unknown_ids.add(item_id, cat.num_items)
            raise HTTPException(404, NO_IMAGE)
        item = cat.item_index[item_id]
        if item < len(self.keys):
            source, key = self.dataset, self.keys[item]
        else:
            await self.learn_runtime_images()
            source, key = self.runtime, self.runtime_keys.get(item_id)
        if key is None or not source.root:
            raise HTTPException(404, NO_IMAGE)
        try:
            data = await asyncio.to_thread(source.read, key)
        except ImageRefused:
            raise HTTPException(404, NO_IMAGE) from None
        kind = next((t for magic, t in MAGIC if data.startswith(magic)), None)
        if kind is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            kind = "image/webp"
        hit = (data, kind or "application/octet-stream")
        self.cache.put(item_id, hit)
        return hit


def _lists_shoppers(request: Request) -> bool:
    """Whether this window may list shoppers and show their histories (see the module's docstring)."""
    state = request.app.state
    window = getattr(state, "shop_page", None)
    if window is not None and not window.live:
        return True  # a catalogue-only shop page: a dataset's customers, no app to act on
    private = getattr(state, "shoppers_private", None)
    return private is None or not private()


def _picker(request: Request) -> None:
    if not _lists_shoppers(request):
        raise HTTPException(403, "the shopper picker is for the keyless demo only: with API keys or shopper tokens "
                                 "this app does not list shoppers or show their histories")


def _quote(item_id: str) -> str:
    from urllib.parse import quote

    return quote(item_id, safe="")


def _page(request: Request) -> ShopPage:
    state = request.app.state
    window = getattr(state, "shop_page", None)
    if window is not None and not window.live:
        return window  # a catalogue-only shop page, set once by serving.commands.shop
    runtime = getattr(state, "runtime", None)
    if runtime is None:
        raise HTTPException(503, "the app is not configured yet")
    if window is None or window.service is not runtime.service:
        window = state.shop_page = ShopPage.build(runtime.service)
    return window


@router.get("", include_in_schema=False)
def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-cache"})


@router.get("/static/{name}")
def asset(name: str) -> FileResponse:
    if name not in ASSETS:  # a fixed list: nothing else under the folder, no path from the client
        raise HTTPException(404, "no such asset")
    return FileResponse(STATIC / name, media_type=ASSETS[name], headers={"Cache-Control": "no-cache"})


@router.get("/images/{item_id}")
async def image(item_id: str, request: Request) -> Response:
    data, kind = await _page(request).image(item_id)
    return Response(data, media_type=kind, headers={"Cache-Control": "public, max-age=3600",
                                                    "X-Content-Type-Options": "nosniff"})


@router.get("/api/info")
async def info(request: Request) -> dict:
    """``mode`` (``live``: the app with its model; ``browse``: a catalogue only), the number of
    items, of items with a picture and of known shoppers, and the categories, largest first."""
    window = _page(request)
    await window.learn_runtime_images()
    return {**window.info(), "shopper_picker": _lists_shoppers(request)}


@router.get("/api/catalogue")
async def catalogue(request: Request, offset: int = Query(0, ge=0, le=100_000_000),
                    limit: int = Query(24, ge=1, le=MAX_CARDS), category: str | None = Query(None, max_length=500),
                    pictured: bool = False) -> dict:
    """A page of the catalogue in its own order: ``limit`` cards from ``offset``, of one
    ``category`` and, with ``pictured=true``, only items that have a picture; ``total`` counts
    what matches."""
    window = _page(request)
    await window.learn_runtime_images()
    picked = window.shelf(category, pictured)
    return {"total": int(len(picked)), "offset": offset,
            "items": [window.card(int(i)) for i in picked[offset:offset + limit]]}


@router.get("/api/users")
async def users(request: Request, limit: int = Query(12, ge=1, le=MAX_SHOPPERS)) -> dict:
    """Known shoppers with a history, the longest histories first (the page's picker)."""
    _picker(request)
    return {"users": _page(request).shoppers()[:limit]}


@router.get("/api/users/{user_id}/history")
async def history(user_id: str, request: Request, limit: int = Query(6, ge=1, le=50)) -> dict:
    """The user's newest dataset items (what "because you saw ..." points at), newest first."""
    _picker(request)
    window = _page(request)
    user, items, _ = window.service.catalog.history_of(user_id)
    if user is None:
        raise HTTPException(404, "unknown user")
    return {"user_id": user_id, "items": [window.card(int(i)) for i in items[::-1][:limit]]}


@router.get("/api/items")
async def cards(request: Request, ids: str = Query(..., min_length=1, max_length=20_000)) -> dict:
    """Cards for comma-separated item ids (at most 100); unknown ids are listed, not carded."""
    window = _page(request)
    wanted = [x for x in ids.split(",") if x][:MAX_CARDS]
    unknown = await window.service.unknown(wanted)
    await window.learn_runtime_images()
    index = window.service.catalog.item_index
    return {"items": [window.card(index[x]) for x in wanted if x not in unknown], "unknown": unknown}


@router.get("/api/stats")
async def stats(request: Request) -> JSONResponse:
    """The live panel's numbers (this replica's; ``kept: false`` where no :class:`Tally` counts)."""
    window = _page(request)
    sink = window.service.metrics.sink
    body = sink.summary() if isinstance(sink, Tally) else {"kept": False}
    body["items"] = window.service.catalog.num_items
    body["runtime_items"] = window.service.catalog.added
    body["admin_images"] = bool(window.runtime.root)
    return JSONResponse(body, headers={"Cache-Control": "no-store"})

