"""A seeded synthetic shop with planted tastes, for tests, ablations and scale runs.

What is planted (and so what a good model should learn):

* every item has a category, colour, brand, material, style and price; its **title and
  description** are composed from them and its **drawn image** shows them (the category sets
  the silhouette, the colour the fill, the style a pattern);
* every user has one or two favourite categories and a favourite colour (kept as user
  attributes ``taste_category=...`` / ``taste_colour=...`` so tests can check what a model
  found); a session picks a category from the user's favourites with probability
  ``taste_strength`` (else uniformly) and a colour likewise, then items of that
  category-and-colour by a long-tailed (Zipf) popularity;
* sessions follow the funnel view -> click -> cart -> purchase with timestamps seconds apart.

Everything is vectorised in numpy; images are composed from per-category masks drawn once
with PIL and encoded in a thread pool, so 1M events over 100k items take seconds.

>>> from training.data.sources.synthetic import SyntheticConfig, generate
>>> ds, _ = generate(SyntheticConfig.tiny())
>>> ds.num_items, ds.events.num_rows > 0
(60, True)
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw

from training.common.errors import DataError
from training.data.dataset import Dataset
from training.data.sources import Prepared

CATEGORIES = ["dress", "sneakers", "backpack", "watch", "mug", "lamp", "headphones", "scarf",
              "jacket", "vase", "notebook", "sunglasses", "cushion", "bottle", "hat", "wallet"]
COLOURS = {"red": (200, 40, 40), "blue": (40, 70, 200), "green": (40, 160, 70), "yellow": (230, 200, 40),
           "black": (30, 30, 30), "white": (235, 235, 235), "pink": (240, 130, 180), "orange": (240, 140, 30),
           "purple": (130, 60, 170), "grey": (130, 130, 130), "brown": (120, 80, 40), "teal": (30, 150, 150)}
MATERIALS = ["cotton", "leather", "ceramic", "steel", "wool", "linen", "bamboo", "glass", "canvas", "recycled plastic"]
STYLES = ["classic", "striped", "dotted", "minimal"]  # each style draws its own pattern
SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "zen", "bo", "da", "fi"]


@dataclass(frozen=True)
class SyntheticConfig:
    num_users: int = 5_000
    num_items: int = 2_000
    num_events: int = 100_000
    num_categories: int = 12
    num_colours: int = 8
    num_brands: int = 40
    taste_strength: float = 0.8  # share of sessions that follow the user's planted tastes
    popularity_skew: float = 1.1  # Zipf exponent of item popularity within a category-colour
    images: bool = True
    image_size: int = 64
    days: int = 90
    seed: int = 0

    def __post_init__(self):
        if not 1 <= self.num_categories <= len(CATEGORIES):
            raise DataError(f"synthetic: num_categories must be in 1..{len(CATEGORIES)}")
        if not 1 <= self.num_colours <= len(COLOURS):
            raise DataError(f"synthetic: num_colours must be in 1..{len(COLOURS)}")
        if self.num_items < self.num_categories * self.num_colours:
            raise DataError(f"synthetic: num_items must be at least num_categories x num_colours "
                            f"({self.num_categories * self.num_colours})")
        if self.num_users < 1 or self.num_events < self.num_users:
            raise DataError("synthetic: need num_users >= 1 and num_events >= num_users")
        if not 0 <= self.taste_strength <= 1:
            raise DataError("synthetic: taste_strength must be in [0, 1]")

    @classmethod
    def tiny(cls) -> SyntheticConfig:
        return cls(num_users=50, num_items=60, num_events=2_000, num_categories=4, num_colours=3,
                   num_brands=5, image_size=32)

    @classmethod
    def from_options(cls, **options) -> SyntheticConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise DataError(f"synthetic: unknown option(s) {unknown} (known: {sorted(names)})")
        return cls(**options)


def _brand_names(n: int, rng: np.random.Generator) -> list[str]:
    names: set[str] = set()
    while len(names) < n:
        names.add("".join(rng.choice(SYLLABLES, size=rng.integers(2, 4))).capitalize())
    return sorted(names)


def _silhouettes(n: int, size: int) -> np.ndarray:
    """One boolean mask per category, drawn with PIL: regular polygons, circles and bars."""
    masks = np.zeros((n, size, size), dtype=bool)
    m = size // 8
    for c in range(n):
        img = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(img)
        kind = c % 4
        box = (m, m, size - m, size - m)
        if kind == 0:
            draw.regular_polygon((size / 2, size / 2, size / 2 - m), n_sides=3 + c // 4)
        elif kind == 1:
            draw.ellipse(box, fill=255)
        elif kind == 2:
            draw.rectangle((m, size // 3 - c // 4, size - m, 2 * size // 3 + c // 4), fill=255)
        else:
            draw.rounded_rectangle((size // 3 - c // 4, m, 2 * size // 3 + c // 4, size - m), radius=m, fill=255)
        if kind == 0:
            draw.regular_polygon((size / 2, size / 2, size / 2 - m), n_sides=3 + c // 4, fill=255)
        masks[c] = np.asarray(img) > 0
    return masks


def _patterns(size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    plain = np.ones((size, size), dtype=np.float32)
    stripes = np.where((yy // max(size // 8, 1)) % 2 == 0, 1.0, 0.6).astype(np.float32)
    dots = np.where(((yy % (size // 4)) - size // 8) ** 2 + ((xx % (size // 4)) - size // 8) ** 2
                    < (size // 16 + 1) ** 2, 0.55, 1.0).astype(np.float32)
    minimal = np.where(xx < size // 2, 1.0, 0.85).astype(np.float32)
    return np.stack([plain, stripes, dots, minimal])


def _write_images(out: Path, cfg: SyntheticConfig, cat: np.ndarray, colour: np.ndarray, style: np.ndarray,
                  rng: np.random.Generator) -> None:
    size = cfg.image_size
    masks = _silhouettes(cfg.num_categories, size)
    patterns = _patterns(size)
    palette = np.array(list(COLOURS.values())[: cfg.num_colours], dtype=np.float32)
    jitter = rng.normal(0, 12, size=(len(cat), 3)).astype(np.float32)
    (out / "images").mkdir()

    def encode(lo: int, hi: int) -> None:
        rgb = np.clip(palette[colour[lo:hi]] + jitter[lo:hi], 0, 255)  # (B, 3)
        shade = patterns[style[lo:hi]][..., None] * rgb[:, None, None, :]  # (B, S, S, 3)
        img = np.where(masks[cat[lo:hi]][..., None], shade, 250.0).astype(np.uint8)
        for k in range(hi - lo):
            buf = io.BytesIO()
            Image.fromarray(img[k]).save(buf, format="JPEG", quality=90)
            (out / "images" / f"{lo + k}.jpg").write_bytes(buf.getvalue())

    chunk = 2048
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda lo: encode(lo, min(lo + chunk, len(cat))), range(0, len(cat), chunk)))


def generate(cfg: SyntheticConfig) -> tuple[Dataset, dict]:
    """Build the synthetic dataset in memory. Returns ``(dataset, planted)`` where ``planted``
    holds the per-item attribute codes (used to draw images)."""
    rng = np.random.default_rng(cfg.seed)
    n_i, n_u, n_c, n_k = cfg.num_items, cfg.num_users, cfg.num_categories, cfg.num_colours
    categories, colours = CATEGORIES[:n_c], list(COLOURS)[:n_k]
    brands = _brand_names(cfg.num_brands, rng)

    # items: every (category, colour) bucket is non-empty; the rest are spread at random
    bucket = np.concatenate([rng.permutation(n_c * n_k), rng.integers(0, n_c * n_k, n_i - n_c * n_k)])
    cat, colour = bucket // n_k, bucket % n_k
    brand = (cat * 7 + rng.integers(0, max(cfg.num_brands // 2, 1), n_i)) % cfg.num_brands
    material = rng.integers(0, len(MATERIALS), n_i)
    style = rng.integers(0, len(STYLES), n_i)
    price = np.round(np.exp(rng.normal(3.0 + 0.15 * cat, 0.5)), 2)
    popularity = np.empty(n_i)
    for b in range(n_c * n_k):  # Zipf popularity within each bucket
        members = np.flatnonzero(bucket == b)
        popularity[members] = 1.0 / (1 + rng.permutation(len(members))) ** cfg.popularity_skew
    titles = [f"{brands[b]} {STYLES[s]} {colours[k]} {categories[c]}"
              for b, s, k, c in zip(brand, style, colour, cat)]
    descriptions = [f"A {STYLES[s]} {categories[c]} in {colours[k]} {MATERIALS[m]} by {brands[b]}. "
                    f"{'Premium pick' if p > np.exp(3.6 + 0.15 * c) else 'Everyday value'} at {p:.2f}."
                    for b, s, k, c, m, p in zip(brand, style, colour, cat, material, price)]

    # users: one or two favourite categories, one favourite colour, activity with a long tail
    fav_cat = rng.integers(0, n_c, size=(n_u, 2))
    two = rng.random(n_u) < 0.5
    fav_cat[~two, 1] = fav_cat[~two, 0]
    fav_col = rng.integers(0, n_k, n_u)
    activity = rng.lognormal(0, 1, n_u)

    # sessions: enough views that the funnel yields about num_events events
    p_click, p_cart, p_buy, p_more = 0.35, 0.3, 0.6, 0.6
    per_view = 1 + p_click * (1 + p_cart * (1 + p_buy))
    n_views = int(1.1 * cfg.num_events / per_view) + 1  # 10 % spare, trimmed below
    views_per_session = 1 / (1 - p_more)
    n_sessions = max(n_u, int(n_views / views_per_session))
    s_user = np.concatenate([np.arange(n_u), rng.choice(n_u, n_sessions - n_u, p=activity / activity.sum())])
    follow_cat = rng.random(n_sessions) < cfg.taste_strength
    s_cat = np.where(follow_cat, fav_cat[s_user, rng.integers(0, 2, n_sessions)], rng.integers(0, n_c, n_sessions))
    follow_col = rng.random(n_sessions) < cfg.taste_strength
    s_col = np.where(follow_col, fav_col[s_user], rng.integers(0, n_k, n_sessions))
    s_len = np.minimum(rng.geometric(1 - p_more, n_sessions), 20)
    s_start = rng.integers(0, cfg.days * 86_400, n_sessions).astype(np.int64)

    # each view: an item from the session's bucket by popularity (inverse-CDF per bucket)
    v_session = np.repeat(np.arange(n_sessions), s_len)
    v_bucket = (s_cat * n_k + s_col)[v_session]
    order = np.argsort(bucket, kind="stable")
    cum = np.cumsum(popularity[order])
    b_lo = np.searchsorted(bucket[order], np.arange(n_c * n_k), side="left")
    b_hi = np.searchsorted(bucket[order], np.arange(n_c * n_k), side="right")
    base = np.where(b_lo > 0, cum[np.maximum(b_lo - 1, 0)], 0.0)
    width = cum[b_hi - 1] - base
    u = base[v_bucket] + rng.random(len(v_bucket)) * width[v_bucket]
    pick = np.minimum(np.searchsorted(cum, u, side="right"), b_hi[v_bucket] - 1)
    v_item = order[np.maximum(pick, b_lo[v_bucket])]
    v_pos = np.arange(len(v_session)) - np.repeat(np.cumsum(s_len) - s_len, s_len)
    v_time = s_start[v_session] + 60 * v_pos

    # funnel
    clicked = rng.random(len(v_item)) < p_click
    carted = clicked & (rng.random(len(v_item)) < p_cart)
    bought = carted & (rng.random(len(v_item)) < p_buy)
    stages = [("view", np.ones_like(clicked), 0), ("click", clicked, 5), ("cart", carted, 20),
              ("purchase", bought, 40)]
    ev_user = np.concatenate([s_user[v_session][m] for _, m, _ in stages])
    ev_item = np.concatenate([v_item[m] for _, m, _ in stages])
    ev_time = np.concatenate([v_time[m] + off for _, m, off in stages])
    ev_kind = np.concatenate([np.full(int(m.sum()), k) for k, (_, m, _) in enumerate(stages)])
    ev_session = np.concatenate([v_session[m] for _, m, _ in stages])
    # trim whole trailing sessions (sessions are in random order; the first n_u give every
    # user one), then order by user and time
    keep = np.lexsort((ev_kind, ev_time, ev_session))[: cfg.num_events]
    ord_ = keep[np.lexsort((ev_kind[keep], ev_time[keep], ev_user[keep]))]
    start_us = np.datetime64("2026-01-01T00:00:00", "us").astype(np.int64)
    kinds = np.array([name for name, _, _ in stages])

    items = pa.table({
        "item_id": np.arange(n_i, dtype=np.int64),
        "external_id": [f"SKU{i:07d}" for i in range(n_i)],
        "title": titles,
        "description": descriptions,
        "category": np.array(categories)[cat].tolist(),
        "brand": np.array(brands)[brand].tolist(),
        "attributes": [[f"category={categories[c]}", f"colour={colours[k]}", f"brand={brands[b]}",
                        f"material={MATERIALS[m]}", f"style={STYLES[s]}"]
                       for c, k, b, m, s in zip(cat, colour, brand, material, style)],
        "price": price,
        "image": [f"images/{i}.jpg" for i in range(n_i)] if cfg.images else pa.nulls(n_i, pa.string()),
    })
    users = pa.table({
        "user_id": np.arange(n_u, dtype=np.int64),
        "external_id": [f"U{u:07d}" for u in range(n_u)],
        "attributes": [sorted({f"taste_category={categories[a]}", f"taste_category={categories[b]}"})
                       + [f"taste_colour={colours[k]}"] for (a, b), k in zip(fav_cat, fav_col)],
    })
    events = pa.table({
        "user_id": ev_user[ord_].astype(np.int64),
        "item_id": ev_item[ord_].astype(np.int64),
        "timestamp": pa.array(start_us + ev_time[ord_] * 1_000_000, type=pa.timestamp("us", tz="UTC")),
        "event_type": pa.array(kinds[ev_kind[ord_]]),
        "value": pa.array(np.where(ev_kind[ord_] == 3, price[ev_item[ord_]], np.nan), from_pandas=True),
        "seq": np.arange(len(ord_), dtype=np.int64),
    })
    ds = Dataset(items=items, users=users, events=events, source="synthetic",
                 splits={"loo": {"kind": "loo", "dedupe": True},
                         "time": {"kind": "time", "dedupe": True},
                         "cold": {"kind": "cold", "dedupe": True}},
                 notes={"config": {f.name: getattr(cfg, f.name) for f in fields(cfg)},
                        "planted": "users.attributes taste_category / taste_colour"})
    return ds, {"cat": cat, "colour": colour, "style": style}


def prepare(input: str | None = None, **options) -> Prepared:
    """``input`` is unused (the shop is generated); options are :class:`SyntheticConfig` fields."""
    cfg = SyntheticConfig.from_options(**options)
    ds, planted = generate(cfg)
    extra = None
    if cfg.images:
        def extra(out: Path) -> None:
            _write_images(out, cfg, planted["cat"], planted["colour"], planted["style"],
                          np.random.default_rng(cfg.seed + 1))
    report = [f"synthetic shop (seed {cfg.seed}): {cfg.num_users:,} users, {cfg.num_items:,} items, "
              f"{ds.events.num_rows:,} events, {cfg.num_categories} categories x {cfg.num_colours} colours, "
              f"taste strength {cfg.taste_strength}"]
    return Prepared(ds, extra=extra, report=report)
