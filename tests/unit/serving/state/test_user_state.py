"""Both user-state backends pass the same tests: the embedded journal and a real Redis server
(started on 127.0.0.1 from the redis-server binary), including a killed process."""

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from serving.state.journal import Journal
from serving.state.memory import MemoryUserState
from serving.state.redis_backend import RedisUserState
from serving.state.redis_server import LocalRedis
from serving.state.user_state import Outcome, UserStateConfig, UserView


def _newest_segment(directory: Path) -> Path:
    return Journal(directory).segments()[-1][1]


def _until(condition, timeout: float = 10.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = LocalRedis(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(params=["embedded", "redis"])
def backend(request, tmp_path, redis_server):
    """(make, restart): ``make(config)`` builds a backend; ``restart(store)`` stops the process that
    holds the state as a crash would (embedded: the store stops without a snapshot, its journal as
    it is on disk; Redis: SIGKILL) and starts it again; the next ``make()`` reads it back."""
    if request.param == "embedded":
        def make(cfg=None):
            return MemoryUserState(cfg or UserStateConfig.tiny(), str(tmp_path / "state"))

        def restart(store):
            store.close(compact=False)
    else:
        if redis_server.proc is None:
            redis_server.start()
        RedisUserState(UserStateConfig.tiny(), redis_server.url).client.flushdb()

        def make(cfg=None):
            return RedisUserState(cfg or UserStateConfig.tiny(), redis_server.url)

        def restart(store):
            store.close()
            redis_server.kill()
            redis_server.start()
    return make, restart


def test_feedback_builds_the_history_and_is_checked(backend):
    make, _ = backend
    s = make()
    s.issue("r1", "u:alice", ["a", "b", "c"])
    assert s.record("r1", "b", "click").outcome is Outcome.RECORDED
    assert s.record("r1", "b", "click").outcome is Outcome.DUPLICATE  # counts once
    assert s.record("r1", "b", "purchase").outcome is Outcome.RECORDED  # another event of the same pair
    assert s.record("r1", "z", "click").outcome is Outcome.NOT_SHOWN
    assert s.record("never", "a", "click").outcome is Outcome.UNKNOWN_REQUEST
    assert s.record("r1", "a", "view").outcome is Outcome.RECORDED
    v = s.view("u:alice")
    assert v.history() == ["b"]  # a view does not enter the history
    assert v.deepest() == {"b": "purchase"}
    assert v.ignored() == {"c"}  # shown, nothing done with it
    assert s.view("u:bob") == UserView()


def test_check_answers_like_record_and_changes_nothing(backend):
    make, _ = backend
    s = make()
    s.issue("r1", "u:carol", ["a", "b"])
    assert s.check("never", "a", "click").outcome is Outcome.UNKNOWN_REQUEST
    assert s.check("r1", "z", "click").outcome is Outcome.NOT_SHOWN
    for _ in range(2):  # checking twice is still "would be recorded": nothing was written
        assert s.check("r1", "a", "click").outcome is Outcome.RECORDED
    assert s.view("u:carol").history() == []
    assert s.record("r1", "a", "click").outcome is Outcome.RECORDED
    assert s.check("r1", "a", "click").outcome is Outcome.DUPLICATE


def test_memory_per_key_is_bounded(backend):
    make, _ = backend
    s = make()  # tiny: last 5 events, last 1 answer
    s.issue("r1", "u:a", [f"i{n}" for n in range(8)])
    for n in range(8):
        s.record("r1", f"i{n}", "click")
    v = s.view("u:a")
    assert [e.item_id for e in v.events] == ["i3", "i4", "i5", "i6", "i7"]
    s.issue("r2", "u:a", ["x"])
    assert s.view("u:a").shown == (("x",),)


def test_every_acknowledged_event_survives_a_restart(backend):
    make, restart = backend
    s = make()
    s.issue("r1", "u:a", ["a", "b"])
    s.issue("r2", "s:anon", ["c"])
    for item in ("a", "b"):
        assert s.record("r1", item, "cart").outcome is Outcome.RECORDED
    assert s.record("r2", "c", "click").outcome is Outcome.RECORDED
    restart(s)
    again = make()
    assert again.view("u:a").history() == ["a", "b"]
    assert again.view("s:anon").history() == ["c"]
    assert again.record("r1", "a", "cart").outcome is Outcome.DUPLICATE  # the registry survived too


def test_made_up_keys_expire_after_the_session_ttl_and_users_after_theirs(backend):
    make, _ = backend
    s = make(UserStateConfig(session_ttl_s=60, user_ttl_s=3600))
    now = time.time()
    for n, (key, ago) in enumerate([("s:x", 120), ("a:ghost", 120), ("u:y", 120), ("u:old", 7200),
                                    ("s:fresh", 30)]):
        s.issue(f"r{n}", key, ["a"], now=now - ago)
        assert s.record(f"r{n}", "a", "click", now=now - ago + 1).outcome is Outcome.RECORDED
    assert s.view("s:x") == UserView() and s.view("a:ghost") == UserView()  # sessions, unknown ids: 60 s
    assert s.view("s:fresh").history() == ["a"]
    assert s.view("u:y").history() == ["a"]  # known users: an hour here
    assert s.view("u:old") == UserView()


def test_made_up_keys_are_capped_least_recently_used_first(backend):
    make, _ = backend
    s = make(UserStateConfig(max_ephemeral_keys=3))
    t = time.time()
    s.issue("ru", "u:real", ["x"], now=t)
    for n in range(3):
        s.issue(f"r{n}", f"a:ghost{n}" if n else "s:anon", [f"i{n}"], now=t + n)
    s.record("r0", "i0", "click", now=t + 3)  # the session is used again: ghost1 is now the oldest
    for n in (3, 4):
        s.issue(f"r{n}", f"a:ghost{n}", [f"i{n}"], now=t + n + 1)
    assert s.view("a:ghost1") == UserView() and s.view("a:ghost2") == UserView()
    assert s.view("s:anon").history() == ["i0"]
    assert [s.view(f"a:ghost{n}").shown for n in (3, 4)] == [(("i3",),), (("i4",),)]
    assert s.view("u:real").shown == (("x",),)  # known users are not in that cap


def test_remembered_answers_are_bounded_in_ids_and_bytes(backend):
    make, _ = backend
    s = make(UserStateConfig(exclude_shown=1, shown_window=5, max_answer_ids=4, max_shown_bytes=45))
    s.issue("r1", "u:a", ["a", "b", "c", "d", "e", "f"])
    assert s.view("u:a").shown == (("a", "b", "c", "d"),)  # the top 4 ids: '["a", "b", "c", "d"]', 20 bytes
    assert s.record("r1", "f", "click").outcome is Outcome.RECORDED  # the request still knows all it showed
    s.issue("r2", "u:a", ["e", "f", "g", "h"])
    assert len(s.view("u:a").shown) == 2  # 40 bytes
    s.issue("r3", "u:a", ["i", "j"])  # 50 bytes: the oldest answer goes
    assert s.view("u:a").shown == (("e", "f", "g", "h"), ("i", "j"))
    s.issue("r4", "u:b", ["x" * 50])  # one id past the byte cap on its own
    assert s.view("u:b").shown == ((),)


def test_every_redis_key_expires(redis_server):
    if redis_server.proc is None:
        redis_server.start()
    s = RedisUserState(UserStateConfig(), redis_server.url)
    s.client.flushdb()
    for n, key in enumerate(["u:a", "s:b", "a:c"]):
        s.issue(f"r{n}", key, ["x", "y"])
        assert s.record(f"r{n}", "x", "click").outcome is Outcome.RECORDED
    keys = s.client.keys("*")
    assert len(keys) == 3 * 4 + 1  # r:, d:, h:, sh: per key, and the made-up keys' sorted set
    assert all(s.client.pttl(k) > 0 for k in keys), {k: s.client.pttl(k) for k in keys}
    assert s.client.ttl("raycart:h:u:a") > 29 * 86_400  # a known user: user_ttl_s (30 days)
    assert s.client.ttl("raycart:h:a:c") <= 1800 and s.client.ttl("raycart:sh:s:b") <= 1800


def test_expired_made_up_keys_leave_memory(tmp_path):
    s = MemoryUserState(UserStateConfig(session_ttl_s=60))
    t = time.time()
    for n in range(5):
        s.issue(f"r{n}", f"a:{n}", ["x"], now=t - 120)
    s.issue("r9", "a:9", ["x"], now=t)
    assert s.memory()["ephemeral"] == 1  # swept, not only hidden


def test_embedded_state_survives_sigkill_of_its_process(tmp_path):
    """The process holding the embedded state is SIGKILLed right after acknowledging events."""
    code = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {os.getcwd()!r})
        from serving.state.user_state import UserStateConfig
        from serving.state.memory import MemoryUserState
        s = MemoryUserState(UserStateConfig(compact_every=5), {str(tmp_path / 'state')!r})
        s.issue("r1", "u:a", [f"i{{n}}" for n in range(12)])
        for n in range(12):
            assert s.record("r1", f"i{{n}}", "click").outcome.value == "recorded"
            print(n, flush=True)   # acknowledged
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    acked = [f"i{line}" for line in proc.stdout.split()]
    assert len(acked) == 12
    s = MemoryUserState(UserStateConfig(compact_every=5), str(tmp_path / "state"))
    assert s.view("u:a").history() == acked  # snapshots and journal together hold every one


def _one_click_then_crash(directory) -> None:
    """An embedded store that showed a, b to u:a, recorded a click on a, and stopped without a snapshot."""
    s = MemoryUserState(UserStateConfig(), str(directory))
    s.issue("r1", "u:a", ["a", "b"])
    s.record("r1", "a", "click")
    s.close(compact=False)


def test_a_corrupt_journal_line_is_skipped_and_counted(tmp_path):
    _one_click_then_crash(tmp_path)
    with open(_newest_segment(tmp_path), "a") as fh:
        fh.write("{not json\n")
        fh.write(json.dumps(["r", "r1", "b", "click", time.time()]) + "\n")
    again = MemoryUserState(UserStateConfig(), str(tmp_path))
    assert again.skipped == 1 and again.view("u:a").history() == ["a", "b"]


def test_a_torn_last_line_does_not_swallow_the_next_write(tmp_path):
    _one_click_then_crash(tmp_path)
    with open(_newest_segment(tmp_path), "a") as fh:
        fh.write('["r", "r1", "b", "cl')  # a write cut by a crash: never acknowledged
    again = MemoryUserState(UserStateConfig(), str(tmp_path))
    assert again.view("u:a").history() == ["a"]
    assert again.record("r1", "b", "cart").outcome is Outcome.RECORDED  # acknowledged ...
    again.close(compact=False)
    third = MemoryUserState(UserStateConfig(), str(tmp_path))
    assert third.view("u:a").history() == ["a", "b"]  # ... so it is back after the next restart
    assert third.skipped == 0 and third.journal.torn == 1


def test_compaction_runs_off_the_request_path(tmp_path, monkeypatch):
    """A snapshot that takes long (held here) holds up no request; the state after it is whole."""
    started, release = threading.Event(), threading.Event()
    write_snapshot = Journal.write_snapshot

    def slow(self, *a, **kw):
        started.set()
        assert release.wait(10)
        return write_snapshot(self, *a, **kw)

    monkeypatch.setattr(Journal, "write_snapshot", slow)
    cfg = UserStateConfig(compact_every=5)
    s = MemoryUserState(cfg, str(tmp_path))
    s.issue("r1", "u:a", [f"i{n}" for n in range(20)])
    for n in range(4):
        s.record("r1", f"i{n}", "click")
    assert started.wait(10)  # the fifth line started a compaction, in the background
    for n in range(4, 20):
        assert s.record("r1", f"i{n}", "click").outcome is Outcome.RECORDED  # answered meanwhile
    assert s.compactions == 0 and s.view("u:a").history() == [f"i{n}" for n in range(20)]
    release.set()
    assert _until(lambda: s.compactions >= 1)
    s.close(compact=False)
    assert (tmp_path / "snapshot.jsonl").exists()
    again = MemoryUserState(UserStateConfig(max_events=50, compact_every=5), str(tmp_path))
    assert again.view("u:a").history() == [f"i{n}" for n in range(20)]
    assert again.record("r1", "i0", "click").outcome is Outcome.DUPLICATE


def test_the_earlier_file_layout_is_read_and_replaced(tmp_path):
    t = time.time()
    (tmp_path / "snapshot.json").write_text(json.dumps(
        {"config": {}, "keys": [["u:a", [["a", "click", t]], [["a", "b"]], t]],
         "requests": [["r1", "u:a", ["a", "b"], t, ["a|click"]]]}))
    (tmp_path / "journal.jsonl").write_text(json.dumps(["r", "r1", "b", "cart", t + 1]) + "\n")
    s = MemoryUserState(UserStateConfig(), str(tmp_path))
    assert s.view("u:a").history() == ["a", "b"] and s.view("u:a").shown == (("a", "b"),)
    assert s.record("r1", "a", "click").outcome is Outcome.DUPLICATE
    s.record("r1", "a", "purchase")
    s.close()
    assert not (tmp_path / "snapshot.json").exists() and not (tmp_path / "journal.jsonl").exists()
    again = MemoryUserState(UserStateConfig(), str(tmp_path))
    assert again.view("u:a").deepest() == {"a": "purchase", "b": "cart"}


def test_redis_down_is_an_error_not_a_hang(tmp_path):
    from serving.state.redis_server import free_port

    s = RedisUserState(UserStateConfig(), f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2)
    assert s.ping() is False
    import redis

    with pytest.raises(redis.exceptions.ConnectionError):
        s.view("u:a")


def test_a_shopper_who_stops_engaging_is_stale_at_their_own_rate():
    s = MemoryUserState(UserStateConfig(shown_window=5))
    s.issue("r0", "u:a", [f"a{n}" for n in range(10)])
    assert not s.view("u:a").stale(0.1)  # never engaged: no evidence of a change
    assert s.view("u:a").surprise() == 0
    for n in range(7, 10):
        s.record("r0", f"a{n}", "click")  # 3 of 10 engaged
    assert s.view("u:a").surprise() == 0  # the newest answer engaged: no run
    s.issue("r1", "u:a", [f"b{n}" for n in range(5)])
    assert not s.view("u:a").stale(0.1)  # p = 3/10 before the run, 5 ignored: 0.7^5 = 0.17
    assert s.view("u:a").surprise() == pytest.approx(-5 * math.log(0.7))
    s.issue("r2", "u:a", [f"c{n}" for n in range(5)])
    # p = 3/10, 10 ignored: 0.7^10 = 0.028 -- judged at the window's rate (3/20) the run would have
    # been 0.85^10 = 0.2, the run dragging its own reference down
    assert s.view("u:a").stale(0.1)
    s.record("r2", "c4", "view")  # a view is not engagement
    assert s.view("u:a").stale(0.1)
    s.record("r2", "c4", "cart")
    assert not s.view("u:a").stale(0.1)
    # at a usual shop's click rate the same run of ignored items is nothing unusual
    t = MemoryUserState(UserStateConfig(shown_window=5))
    t.issue("q0", "u:b", [f"x{n}" for n in range(40)])
    t.record("q0", "x0", "click")
    t.issue("q1", "u:b", [f"y{n}" for n in range(10)])
    assert not t.view("u:b").stale(0.1)  # p = 1/40, an answer of 10 ignored: 0.975^10 = 0.78


def test_a_shopper_who_engaged_with_every_item_before_is_surprised_by_any_ignored_one():
    s = MemoryUserState(UserStateConfig(shown_window=5))
    s.issue("r0", "u:a", ["a0", "a1"])
    for item in ("a0", "a1"):
        s.record("r0", item, "click")
    assert s.view("u:a").surprise() == 0
    s.issue("r1", "u:a", ["b0"])
    assert s.view("u:a").surprise() == math.inf and s.view("u:a").stale(0.3)


def test_a_steady_shopper_who_clicked_early_in_the_last_answer_is_not_stale():
    """Whole answers count: a click at slot 2 and eight ignored items below it are engagement."""
    s = MemoryUserState(UserStateConfig(shown_window=5))
    s.issue("r0", "u:a", [f"a{n}" for n in range(10)])
    for n in (0, 3, 6):
        s.record("r0", f"a{n}", "click")
    s.issue("r1", "u:a", [f"b{n}" for n in range(10)])
    s.record("r1", "b1", "click")  # p = 4/20; the 8 below it ignored: 0.8^8 = 0.17 (was judged stale)
    assert not s.view("u:a").stale(0.3)
    s.issue("r2", "u:a", [f"c{n}" for n in range(10)])  # then a whole answer ignored: p = 4/20, 0.8^10 = 0.11
    assert s.view("u:a").stale(0.3)
    for n in range(3, 8):  # five more ignored answers: the window (5) holds no engagement at all
        s.issue(f"r{n}", "u:a", [f"d{n}-{j}" for j in range(10)])
    assert s.view("u:a").stale(0.3)  # ... but they engaged before: still stale, not "never engaged"
    assert not s.view("u:a").stale(0.0)  # alpha 0: the rule is off
