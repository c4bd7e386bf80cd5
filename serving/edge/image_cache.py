"""The shop page's two memories of ``GET /shop/images/{id}``, per replica (plain Python, no Ray).

- :class:`ImageCache`: the pictures served, least recently used first out, bounded by their total
  bytes (a count of entries is no bound when one picture may be 5 MiB and another 2 KB).
- :class:`UnknownIds`: ids the catalogue did not know, so that asking for one again answers 404
  without another item-registry call. Bounded, each entry lives ``ttl_s`` (an item added through
  another replica shows up by then), and all are forgotten when the catalogue grows.

Example::

    cache = ImageCache(max_bytes=64 * 2**20)
    cache.put("SKU1", (b"\\x89PNG...", "image/png")); cache.get("SKU1")  # the bytes and their type
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

Picture = tuple[bytes, str]  # the image's bytes and its media type


class ImageCache:
    """Pictures by item id, at most ``max_bytes`` of them in all (0: none kept)."""

    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError(f"image cache: max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self.total = 0  # bytes held now
        self.entries: collections.OrderedDict[str, Picture] = collections.OrderedDict()

    def get(self, key: str) -> Picture | None:
        hit = self.entries.get(key)
        if hit is not None:
            self.entries.move_to_end(key)
        return hit

    def put(self, key: str, picture: Picture) -> None:
        """Keep ``picture``, evicting the least recently used until the total fits; one larger than
        the whole cap is not kept."""
        size = len(picture[0])
        old = self.entries.pop(key, None)
        if old is not None:
            self.total -= len(old[0])
        if size > self.max_bytes:
            return
        self.entries[key] = picture
        self.total += size
        while self.total > self.max_bytes:
            _, evicted = self.entries.popitem(last=False)
            self.total -= len(evicted[0])

    def __len__(self) -> int:
        return len(self.entries)


class UnknownIds:
    """Ids found unknown, each for ``ttl_s`` seconds, at most ``capacity`` of them (the oldest go
    first), all forgotten when the catalogue's size (``stamp``) changes."""

    def __init__(self, capacity: int = 4096, ttl_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        if capacity < 0 or ttl_s <= 0:
            raise ValueError(f"unknown-id cache: capacity >= 0 and ttl_s > 0, got {capacity}, {ttl_s}")
        self.capacity, self.ttl_s, self.clock = capacity, ttl_s, clock
        self.stamp: int | None = None
        self.expiry: collections.OrderedDict[str, float] = collections.OrderedDict()

    def _same(self, stamp: int) -> None:
        if stamp != self.stamp:
            self.expiry.clear()
            self.stamp = stamp

    def known_unknown(self, key: str, stamp: int) -> bool:
        """Whether ``key`` was found unknown lately, in a catalogue of ``stamp`` items."""
        self._same(stamp)
        until = self.expiry.get(key)
        if until is None:
            return False
        if self.clock() >= until:
            del self.expiry[key]
            return False
        return True

    def add(self, key: str, stamp: int) -> None:
        self._same(stamp)
        if self.capacity == 0:
            return
        self.expiry.pop(key, None)
        self.expiry[key] = self.clock() + self.ttl_s
        while len(self.expiry) > self.capacity:
            self.expiry.popitem(last=False)

    def __len__(self) -> int:
        return len(self.expiry)
