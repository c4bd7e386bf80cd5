"""Token buckets and the per-answer feedback cap (``serving.core.ratelimit``), on a made-up clock."""

import pytest

from serving.core.ratelimit import RequestCap, TokenBuckets, buckets, retry_after


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_a_bucket_serves_its_burst_then_refills_at_its_rate():
    clock = Clock()
    b = TokenBuckets(rate=2.0, burst=3, max_names=10, clock=clock)
    assert [b.take("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take("k") == pytest.approx(0.5)  # one token comes every 0.5 s
    assert b.take("other") == 0.0  # buckets are per name
    clock.now += 0.25
    assert b.take("k") == pytest.approx(0.25)  # a refused take takes nothing
    clock.now += 0.25
    assert b.take("k") == 0.0 and b.take("k") > 0
    clock.now += 100
    assert [b.take("k") for _ in range(4)][-1] > 0  # refilled to the burst, not beyond


def test_the_table_of_buckets_is_bounded():
    clock = Clock()
    b = TokenBuckets(rate=1.0, burst=1, max_names=3, clock=clock)
    for n in range(1000):  # made-up user ids
        b.take(f"u:{n}")
    assert len(b.buckets) == 3 and list(b.buckets) == ["u:997", "u:998", "u:999"]


def test_rate_zero_is_off_and_bad_settings_are_refused():
    assert buckets(0.0, 0, 10) is None
    with pytest.raises(ValueError):
        TokenBuckets(rate=1.0, burst=0, max_names=10)
    assert retry_after(0.01) == "1" and retry_after(2.2) == "3"


def test_the_cap_counts_reserved_events_and_gives_back_released_ones():
    cap = RequestCap(limit=2, max_requests=2)
    assert cap.reserve("r1") and cap.reserve("r1") and not cap.reserve("r1")
    cap.release("r1")
    assert cap.reserve("r1") and not cap.reserve("r1")
    cap.reserve("r2")
    cap.reserve("r3")  # r1 is the oldest: forgotten
    assert list(cap.counts) == ["r2", "r3"]
