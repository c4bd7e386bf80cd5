"""The shared-storage feedback log: an append returns only once its record is in shared storage,
concurrent appends share one write (group commit), and the records of a writer that stopped
(its machine lost) are published by another writer. Shared storage here is a local folder; the
multi-node integration test runs it on the SeaweedFS S3 server."""

import shutil
import threading
import time
from pathlib import Path

import pytest

from serving.feedback_shared import SharedFeedbackLog, SharedLogConfig
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


def test_a_stopped_writers_records_are_published_by_another(tmp_path):
    cfg = SharedLogConfig(root=str(tmp_path / "log"), flush_rows=1000, flush_seconds=3600, heartbeat_s=3600,
                          dead_after_s=0.2, adopt_every_s=0.0)
    lost = SharedFeedbackLog(cfg, "lost")
    for i in range(5):
        lost.append("events", _event(i))  # acknowledged: in shared storage, never published by "lost"
    lost.closed = True  # its machine is gone: no more heartbeats, no close
    live = SharedFeedbackLog(SharedLogConfig(**{**cfg.__dict__, "dead_after_s": 3600}), "live")
    assert live.tick() == 0  # "lost" beat less than dead_after_s ago for this writer: alive, left alone
    live.close()
    time.sleep(0.3)  # past dead_after_s
    adopter = SharedFeedbackLog(cfg, "adopter")  # adopts on start
    assert adopter.recovered == 5 and adopter.adopted_writers == 1
    assert not (tmp_path / "log" / "_wal" / "lost").exists()
    assert sorted(read_feedback(str(tmp_path / "log"), "events")["request_id"].to_pylist()) == [f"r{i}" for i in range(5)]
    adopter.close()


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
