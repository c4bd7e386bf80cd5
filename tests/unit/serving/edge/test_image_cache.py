"""The shop page's picture cache (bounded in bytes) and its memory of unknown ids (bounded, with a
time to live, forgotten when the catalogue grows); no Ray."""

import pytest

from serving.edge.image_cache import ImageCache, UnknownIds


def _pic(n: int) -> tuple[bytes, str]:
    return b"x" * n, "image/png"


def test_the_cache_evicts_the_least_recently_used_until_its_bytes_fit():
    cache = ImageCache(max_bytes=100)
    for key in ("a", "b"):
        cache.put(key, _pic(40))
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("c", _pic(40))  # 120 > 100: b goes
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    assert cache.total == 80 <= cache.max_bytes
    cache.put("d", _pic(90))  # a and c go
    assert len(cache) == 1 and cache.total == 90
    cache.put("d", _pic(10))  # a new picture under a kept key replaces it
    assert cache.total == 10
    cache.put("huge", _pic(101))  # larger than the whole cap: not kept, nothing evicted for it
    assert cache.get("huge") is None and cache.get("d") is not None and cache.total == 10


def test_the_cache_total_never_passes_the_cap():
    cache = ImageCache(max_bytes=1000)
    for i in range(200):
        cache.put(f"k{i}", _pic(37 * (i % 9) + 1))
        assert cache.total == sum(len(p[0]) for p in cache.entries.values()) <= 1000
    assert "k199" in cache.entries and "k0" not in cache.entries
    assert len(ImageCache(max_bytes=0).entries) == 0
    with pytest.raises(ValueError, match="max_bytes"):
        ImageCache(-1)


def test_unknown_ids_expire_are_bounded_and_forgotten_when_the_catalogue_grows():
    now = [0.0]
    unknown = UnknownIds(capacity=3, ttl_s=10.0, clock=lambda: now[0])
    unknown.add("x", stamp=100)
    assert unknown.known_unknown("x", 100) and not unknown.known_unknown("y", 100)
    now[0] = 9.9
    assert unknown.known_unknown("x", 100)
    now[0] = 10.0
    assert not unknown.known_unknown("x", 100) and len(unknown) == 0  # lived its ttl
    for key in ("a", "b", "c", "d"):
        unknown.add(key, 100)
    assert len(unknown) == 3 and not unknown.known_unknown("a", 100) and unknown.known_unknown("d", 100)
    assert not unknown.known_unknown("d", 101) and len(unknown) == 0  # an item was added: ask again
    off = UnknownIds(capacity=0)
    off.add("x", 1)
    assert not off.known_unknown("x", 1)
