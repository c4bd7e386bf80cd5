"""Both user-state backends pass the same tests: the embedded journal and a real Redis server
(started on 127.0.0.1 from the redis-server binary), including a killed process."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from serving.redis_server import LocalRedis
from serving.user_state import MemoryUserState, Outcome, UserStateConfig, UserView
from serving.user_state_redis import RedisUserState


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = LocalRedis(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(params=["embedded", "redis"])
def backend(request, tmp_path, redis_server):
    """(make, restart): ``make(config)`` builds a backend; ``restart()`` kills the process that holds
    the state (SIGKILL) and starts it again."""
    if request.param == "embedded":
        def make(cfg=None):
            return MemoryUserState(cfg or UserStateConfig.tiny(), str(tmp_path / "state"))

        def restart():
            pass  # a new MemoryUserState on the same directory is the restarted process (see the kill test)
    else:
        if redis_server.proc is None:
            redis_server.start()
        RedisUserState(UserStateConfig.tiny(), redis_server.url).client.flushdb()

        def make(cfg=None):
            return RedisUserState(cfg or UserStateConfig.tiny(), redis_server.url)

        def restart():
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
    restart()
    again = make()
    assert again.view("u:a").history() == ["a", "b"]
    assert again.view("s:anon").history() == ["c"]
    assert again.record("r1", "a", "cart").outcome is Outcome.DUPLICATE  # the registry survived too


def test_sessions_expire(backend, tmp_path):
    make, _ = backend
    cfg = UserStateConfig(session_ttl_s=1, request_ttl_s=60)
    s = make(cfg)
    s.issue("r1", "s:x", ["a"])
    s.record("r1", "a", "click")
    s.issue("r2", "u:y", ["a"])
    s.record("r2", "a", "click")
    import time

    time.sleep(2.2)
    assert s.view("s:x").history() == []  # anonymous: gone after its TTL
    assert s.view("u:y").history() == ["a"]  # users do not expire


def test_embedded_state_survives_sigkill_of_its_process(tmp_path):
    """The process holding the embedded state is SIGKILLed right after acknowledging events."""
    code = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {os.getcwd()!r})
        from serving.user_state import MemoryUserState, UserStateConfig
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


def test_a_corrupt_journal_line_is_skipped_and_counted(tmp_path):
    s = MemoryUserState(UserStateConfig(), str(tmp_path))
    s.issue("r1", "u:a", ["a", "b"])
    s.record("r1", "a", "click")
    with open(tmp_path / "journal.jsonl", "a") as fh:
        fh.write("{not json\n")
        fh.write(json.dumps(["r", "r1", "b", "click", 1.0]) + "\n")
    again = MemoryUserState(UserStateConfig(), str(tmp_path))
    assert again.skipped == 1 and again.view("u:a").history() == ["a", "b"]


def test_redis_down_is_an_error_not_a_hang(tmp_path):
    from serving.redis_server import free_port

    s = RedisUserState(UserStateConfig(), f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2)
    assert s.ping() is False
    import redis

    with pytest.raises(redis.exceptions.ConnectionError):
        s.view("u:a")


def test_a_shopper_who_stops_engaging_is_stale_at_their_own_rate():
    s = MemoryUserState(UserStateConfig(shown_window=5))
    s.issue("r0", "u:a", [f"a{n}" for n in range(10)])
    assert not s.view("u:a").stale(0.1)  # never engaged: no evidence of a change
    for n in range(5, 10):
        s.record("r0", f"a{n}", "click")  # the last 5 of 10 engaged
    s.issue("r1", "u:a", [f"b{n}" for n in range(5)])
    assert not s.view("u:a").stale(0.1)  # p = 5/15, 5 ignored in a row: 0.67^5 = 0.13
    s.issue("r2", "u:a", [f"c{n}" for n in range(5)])
    assert s.view("u:a").stale(0.1)  # p = 5/20, 10 ignored in a row: 0.75^10 = 0.056
    s.record("r2", "c4", "view")  # a view is not engagement
    assert s.view("u:a").stale(0.1)
    s.record("r2", "c4", "cart")
    assert not s.view("u:a").stale(0.1)
    # at a usual shop's click rate the same run of ignored items is nothing unusual
    t = MemoryUserState(UserStateConfig(shown_window=5))
    t.issue("q0", "u:b", [f"x{n}" for n in range(40)])
    t.record("q0", "x0", "click")
    t.issue("q1", "u:b", [f"y{n}" for n in range(10)])
    assert not t.view("u:b").stale(0.1)  # p = 1/50, 49 ignored: 0.98^49 = 0.37
