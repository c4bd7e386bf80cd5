"""The shared-storage feedback log: an append returns only once its record is in shared storage,
concurrent appends share one write (group commit), and the records of a writer that stopped
(its machine lost) are published by another writer. Shared storage here is a local folder; the
multi-node integration test runs it on the SeaweedFS S3 server."""

import shutil
import threading
import time
from pathlib import Path

import pytest

from serving.feedback.shared import SharedFeedbackLog, SharedLogConfig
from training.data.feedback import read_feedback


def _event(i: int) -> dict:
    return {"request_id": f"r{i}", "item_id": f"SKU{i}", "event": "click", "timestamp": 1_800_000_000.0 + i}


def _objects(wal: Path, writer: str) -> list[Path]:
    return sorted((wal / writer).glob("*.jsonl"))


def test_append_is_in_shared_storage_when_it_returns_and_publishes_to_parquet(tmp_path):
    cfg = SharedLogConfig(root=str(tmp_path / "log"), flush_rows=1000, flush_seconds=3600)
    log = SharedFeedbackLog(cfg, "w1")
    wal = tmp_path / "log" / "_wal"
    log.append("events", _event(1))
    objects = _objects(wal, "w1")
    assert len(objects) == 1 and '"request_id": "r1"' in objects[0].read_text()  # before anything publishes
    assert read_feedback(str(tmp_path / "log"), "events").num_rows == 0
    log.append_many("events", [_event(2), _event(3)])
    assert log.tick() == 0  # not due yet
    assert log.flush() == 3
    assert sorted(read_feedback(str(tmp_path / "log"), "events")["request_id"].to_pylist()) == ["r1", "r2", "r3"]
    assert _objects(wal, "w1") == []  # published objects are removed
    log.close()
    assert not (wal / "w1").exists()  # a clean close leaves no heartbeat to adopt


def test_concurrent_appends_share_group_commits(tmp_path):
    log = SharedFeedbackLog(SharedLogConfig(root=str(tmp_path / "log"), flush_rows=10_000, flush_seconds=3600), "w1")
    n_threads, per_thread = 8, 25

    def client(t: int) -> None:
        for i in range(per_thread):
            log.append("events", _event(t * 1000 + i))

    threads = [threading.Thread(target=client, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert log.committed_rows == n_threads * per_thread
    assert log.commits < n_threads * per_thread  # some writes carried several appends
    log.close()
    ids = read_feedback(str(tmp_path / "log"), "events")["request_id"].to_pylist()
    assert sorted(ids) == sorted(f"r{t * 1000 + i}" for t in range(n_threads) for i in range(per_thread))


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _lose(log: SharedFeedbackLog) -> None:
    """Its machine is gone: no more heartbeats, no close."""
    log.stop_beating.set()
    log.heart.join()
    log.closed = True


def _wait_for_beats(log: SharedFeedbackLog, more: int) -> None:
    target = log.beats + more
    deadline = time.monotonic() + 5
    while log.beats < target:
        assert time.monotonic() < deadline, "the heartbeat thread stopped beating"
        time.sleep(0.01)


def test_a_stopped_writers_records_are_published_after_the_margin_and_not_before(tmp_path):
    cfg = SharedLogConfig(root=str(tmp_path / "log"), flush_rows=1000, flush_seconds=3600, heartbeat_s=0.01,
                          dead_after_s=60, adopt_every_s=0.0)
    lost = SharedFeedbackLog(cfg, "lost")
    for i in range(5):
        lost.append("events", _event(i))  # acknowledged: in shared storage, never published by "lost"
    _lose(lost)
    clock = Clock()
    adopter = SharedFeedbackLog(cfg, "adopter", clock=clock)
    assert adopter.recovered == 0  # first sight of "lost": watched from now on, not judged
    clock.now += 59
    assert adopter.tick() == 0 and (tmp_path / "log" / "_wal" / "lost").exists()  # not yet past the margin
    clock.now += 2
    assert adopter.tick() == 5 and adopter.adopted_writers == 1
    assert not (tmp_path / "log" / "_wal" / "lost").exists()
    assert sorted(read_feedback(str(tmp_path / "log"), "events")["request_id"].to_pylist()) == [f"r{i}" for i in range(5)]
    adopter.close()


def test_a_writer_whose_publisher_is_stuck_keeps_beating_and_is_not_adopted(tmp_path, monkeypatch):
    import serving.feedback.shared as shared

    stuck, real = threading.Event(), shared.write_parts

    def write_parts(root, by_table, name):  # the upload of writer "busy" hangs (an S3 stall)
        if name.startswith("busy-"):
            assert stuck.wait(10)
        return real(root, by_table, name)

    monkeypatch.setattr(shared, "write_parts", write_parts)
    cfg = SharedLogConfig(root=str(tmp_path / "log"), flush_rows=1, flush_seconds=3600, heartbeat_s=0.01,
                          dead_after_s=60, adopt_every_s=0.0)
    busy = SharedFeedbackLog(cfg, "busy")
    busy.append("events", _event(1))
    publisher = threading.Thread(target=busy.tick)  # its publisher: stuck in the upload
    publisher.start()
    clock = Clock()
    watcher = SharedFeedbackLog(cfg, "watcher", clock=clock)
    for _ in range(3):  # minutes by the watcher's clock, heartbeats all along
        clock.now += 61
        _wait_for_beats(busy, 2)
        watcher.tick()
    assert publisher.is_alive()  # still stuck
    assert watcher.adopted_writers == 0 and (tmp_path / "log" / "_wal" / "busy").exists()
    stuck.set()
    publisher.join()
    busy.close()
    watcher.close()
    assert read_feedback(str(tmp_path / "log"), "events")["request_id"].to_pylist() == ["r1"]


def test_a_writer_with_a_skewed_clock_is_not_adopted(tmp_path):
    cfg = SharedLogConfig(root=str(tmp_path / "log"), flush_rows=1000, flush_seconds=3600, heartbeat_s=0.01,
                          dead_after_s=60, adopt_every_s=0.0)
    behind = SharedFeedbackLog(cfg, "behind", wall=lambda: time.time() - 3600)  # its node's clock: an hour slow
    ahead = SharedFeedbackLog(cfg, "ahead", wall=lambda: time.time() + 3600)
    behind.append("events", _event(1))
    clock = Clock()
    watcher = SharedFeedbackLog(cfg, "watcher", clock=clock)
    for _ in range(2):
        clock.now += 61
        _wait_for_beats(behind, 2)
        _wait_for_beats(ahead, 2)
        watcher.tick()
    assert watcher.adopted_writers == 0
    assert (tmp_path / "log" / "_wal" / "behind").exists() and (tmp_path / "log" / "_wal" / "ahead").exists()
    for log in (behind, ahead, watcher):
        log.close()


def test_the_margin_must_leave_room_for_a_heartbeat():
    with pytest.raises(ValueError, match="heartbeat_s"):
        SharedLogConfig(root="x", heartbeat_s=30, dead_after_s=30)
    assert SharedLogConfig(root="x").dead_after_s >= 30 + 2 * SharedLogConfig(root="x").heartbeat_s


def test_records_count_once_their_ack_is_committed(tmp_path):
    log = SharedFeedbackLog(SharedLogConfig(root=str(tmp_path / "log"), flush_rows=1000, flush_seconds=3600), "w1")
    log.append_many("events", [_event(1)], ack_id="a1")
    log.append_many("events", [_event(2)], ack_id="a2")  # its request failed: never acknowledged
    log.ack(["a1"])  # joins the next group commit, nobody waits for it
    log.close()
    root = str(tmp_path / "log")
    assert read_feedback(root, "events")["request_id"].to_pylist() == ["r1"]
    assert read_feedback(root, "events", acknowledged=False).num_rows == 2


def test_a_failed_commit_acknowledges_nothing(tmp_path):
    log = SharedFeedbackLog(SharedLogConfig(root=str(tmp_path / "log"), flush_rows=1000, flush_seconds=3600), "w1")
    log.append("events", _event(1))
    folder = tmp_path / "log" / "_wal" / "w1"
    shutil.rmtree(folder)
    folder.write_text("not a folder")  # shared storage refuses writes
    with pytest.raises(OSError, match="shared WAL write failed"):
        log.append("events", _event(2))
    folder.unlink()
    folder.mkdir()
    log.append("events", _event(3))  # works again once storage does
    log.close()
    ids = read_feedback(str(tmp_path / "log"), "events")["request_id"].to_pylist()
    assert sorted(ids) == ["r1", "r3"]  # r2 was refused, so never acknowledged
