"""The durable feedback log: batches to Parquet, and a killed writer loses no acknowledged record."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serving.feedback.log import FeedbackLog, FeedbackLogConfig
from training.common.errors import DataError
from training.data.feedback import count_rows, read_feedback


def _event(i: int) -> dict:
    return {"request_id": f"r{i}", "item_id": f"SKU{i}", "event": "click", "timestamp": 1_800_000_000.0 + i}


def test_records_flush_to_parquet_in_batches(tmp_path):
    log = FeedbackLog(FeedbackLogConfig(root=str(tmp_path / "log"), wal_dir=str(tmp_path / "wal"), flush_rows=10,
                                        flush_seconds=3600), "w1")
    for i in range(25):
        log.append("events", _event(i))
    assert read_feedback(str(tmp_path / "log"), "events").num_rows == 20  # two batches of 10 published
    log.append_many("impressions", [{"request_id": "r1", "user_id": None, "context_hash": "c", "num_candidates": 200,
                                     "item_id": "SKU9", "position": 0, "propensity": 0.95, "score": 1.5,
                                     "model_version": "m1", "policy_version": "p1", "timestamp": None}])
    log.close()
    events = read_feedback(str(tmp_path / "log"), "events")
    assert sorted(events["request_id"].to_pylist()) == sorted(f"r{i}" for i in range(25))
    imp = read_feedback(str(tmp_path / "log"), "impressions")
    assert imp.num_rows == 1 and imp["propensity"][0].as_py() == 0.95 and imp["user_id"][0].as_py() is None
    assert not list((tmp_path / "wal" / "w1").glob("*.jsonl"))  # nothing left pending


WRITER = """
import sys
from serving.feedback.log import FeedbackLog, FeedbackLogConfig
log = FeedbackLog(FeedbackLogConfig(root=sys.argv[1], wal_dir=sys.argv[2], flush_rows=1000, flush_seconds=3600), "w")
for i in range(100000):
    log.append("events", {"request_id": f"r{i}", "item_id": "SKU", "event": "cart", "timestamp": None})
    print(i, flush=True)  # acknowledged
"""


def test_a_killed_writer_loses_no_acknowledged_record(tmp_path):
    root, wal = str(tmp_path / "log"), str(tmp_path / "wal")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, root, wal], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[4])
    acked = -1
    deadline = time.time() + 60
    while acked < 300 and time.time() < deadline:
        acked = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # acknowledgements may still sit in the pipe: the last one printed counts
    for line in proc.stdout.read().split():
        acked = int(line)
    assert read_feedback(root, "events").num_rows == 0  # all of it was still in the write-ahead log
    FeedbackLog(FeedbackLogConfig(root=root, wal_dir=wal), "w").close()  # the replacement recovers it
    ids = read_feedback(root, "events")["request_id"].to_pylist()
    assert set(f"r{i}" for i in range(acked + 1)) <= set(ids)
    assert len(ids) == len(set(ids))  # and nothing was published twice


def test_a_torn_last_line_is_ignored(tmp_path):
    wal = tmp_path / "wal" / "w"
    wal.mkdir(parents=True)
    (wal / "00000000000000000001-dead.jsonl").write_text(
        '{"table": "events", "request_id": "r1", "item_id": "A", "event": "view", "timestamp": null}\n'
        '{"table": "events", "request_id": "r2", "item_')
    log = FeedbackLog(FeedbackLogConfig(root=str(tmp_path / "log"), wal_dir=str(tmp_path / "wal")), "w")
    assert log.recovered == 1
    log.close()
    assert read_feedback(str(tmp_path / "log"), "events")["request_id"].to_pylist() == ["r1"]


def test_a_new_writer_recovers_a_dead_writers_folder_but_not_a_live_one(tmp_path):
    cfg = FeedbackLogConfig(root=str(tmp_path / "log"), wal_dir=str(tmp_path / "wal"), flush_rows=1000)
    root, wal = str(tmp_path / "log"), str(tmp_path / "wal")
    proc = subprocess.Popen([sys.executable, "-c", WRITER.replace('"w")', '"dead")'), root, wal],
                            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[4])
    acked = -1
    while acked < 50:
        acked = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for line in proc.stdout.read().split():
        acked = int(line)
    alive = FeedbackLog(cfg, "alive")
    alive.append("events", _event(0))
    newcomer = FeedbackLog(cfg, "newcomer")  # e.g. the replica Serve started in place of the dead one
    ids = set(read_feedback(root, "events")["request_id"].to_pylist())
    assert {f"r{i}" for i in range(acked + 1)} <= ids  # the dead writer's records, published
    assert (tmp_path / "wal" / "alive").exists()  # the live writer's folder was left alone
    alive.close()
    newcomer.close()


def test_a_corrupt_line_mid_segment_is_skipped_and_counted_not_fatal(tmp_path):
    wal = tmp_path / "wal" / "w"
    wal.mkdir(parents=True)
    good = '{"table": "events", "request_id": "r%d", "item_id": "A", "event": "view", "timestamp": null}\n'
    (wal / "00000000000000000001-old.jsonl").write_text(
        good % 1 + "\x00\x00garbage{\n" + '{"table": "nope", "request_id": "x"}\n'
        + '{"table": "events", "request_id": "r9", "item_id": "A", "event": "view", "timestamp": "soon"}\n' + good % 2)
    log = FeedbackLog(FeedbackLogConfig(root=str(tmp_path / "log"), wal_dir=str(tmp_path / "wal")), "w")
    assert log.recovered == 2 and log.health()["corrupt_lines"] == 3
    log.append("events", _event(3))  # and the writer works
    log.close()
    assert sorted(read_feedback(str(tmp_path / "log"), "events")["request_id"].to_pylist()) == ["r1", "r2", "r3"]


def test_a_failed_publish_keeps_the_segment_is_retried_and_appends_go_on(tmp_path):
    blocker = tmp_path / "log"
    blocker.write_text("a file where the log's folder should be: every publish fails")
    cfg = FeedbackLogConfig(root=str(blocker), wal_dir=str(tmp_path / "wal"), flush_rows=2, flush_seconds=3600,
                            retry_max_s=0.2, background=True)
    log = FeedbackLog(cfg, "w")
    for i in range(5):
        log.append("events", _event(i))  # acknowledged: on the WAL
    assert log.tick() == 0
    health = log.health()
    assert not health["ok"] and health["unpublished_segments"] >= 1 and health["last_error"]
    assert list((tmp_path / "wal" / "w").glob("*.jsonl"))  # nothing acknowledged was dropped
    time.sleep(0.3)
    log.tick()  # retried (and failed again), still not fatal
    assert log.health()["failures"] >= 2
    blocker.unlink()  # the store is back
    time.sleep(0.3)
    log.seal()
    assert log.tick() == 5 and log.health()["ok"]
    log.close()
    assert sorted(read_feedback(str(blocker), "events")["request_id"].to_pylist()) == [f"r{i}" for i in range(5)]


def test_readers_see_each_record_once(tmp_path):
    """At-least-once: a client's retry (after a 503 between log and state) logs an event twice;
    read_feedback keeps the first row of each (request, item, event)."""
    log = FeedbackLog(FeedbackLogConfig(root=str(tmp_path / "log"), wal_dir=str(tmp_path / "wal")), "w")
    log.append("events", _event(1))
    log.append("events", {**_event(1), "timestamp": 1_900_000_000.0})  # the retry
    log.append("events", {**_event(1), "event": "purchase"})  # another event of the pair
    log.close()
    rows = read_feedback(str(tmp_path / "log"), "events")
    assert rows["event"].to_pylist() == ["click", "purchase"]
    assert rows["timestamp"].to_pylist()[0] == read_feedback(str(tmp_path / "log"), "events", dedupe=False)[
        "timestamp"].to_pylist()[0]  # the first one kept
    assert read_feedback(str(tmp_path / "log"), "events", dedupe=False).num_rows == 3


def test_a_segment_that_never_publishes_does_not_block_the_others(tmp_path, monkeypatch, caplog):
    import serving.feedback.log as fl

    monkeypatch.setattr(fl, "QUARANTINE_AFTER", 2)
    caplog.set_level("WARNING", "serving.feedback.log")
    (tmp_path / "wal" / "w" / "00000000000000000001-bad.jsonl").mkdir(parents=True)  # unreadable as a file
    (tmp_path / "wal" / "lost+found").mkdir()  # not a writer folder: left alone
    log = FeedbackLog(FeedbackLogConfig(root=str(tmp_path / "log"), wal_dir=str(tmp_path / "wal"), flush_rows=1,
                                        background=True), "w")
    assert not log.health()["ok"]
    for i in range(2):
        log.append("events", _event(i))
        log.seal()
        log.publish()  # the good segments publish although the bad one fails
    assert log.health()["quarantined_segments"] == 1 and log.health()["unpublished_segments"] == 0
    log.append("events", _event(2))
    log.seal()
    log.publish()
    assert log.health()["ok"]
    aside = tmp_path / "wal" / ".quarantine" / "w-00000000000000000001-bad.jsonl"
    assert aside.exists()
    assert any(str(aside) in r.getMessage() for r in caplog.records)  # never set aside silently
    assert (tmp_path / "wal" / "lost+found").exists()
    log.close()
    assert sorted(read_feedback(str(tmp_path / "log"), "events")["request_id"].to_pylist()) == ["r0", "r1", "r2"]


def test_only_acknowledged_records_count_and_a_writer_that_died_before_its_ack_leaves_none(tmp_path):
    root = str(tmp_path / "log")
    cfg = FeedbackLogConfig(root=root, wal_dir=str(tmp_path / "wal"), flush_rows=1000, flush_seconds=3600)
    log = FeedbackLog(cfg, "w")
    log.append_many("events", [_event(1)], ack_id="a1")
    log.ack(["a1"])  # same segment: stored acknowledged, no ack row
    log.append_many("events", [_event(2)], ack_id="a2")
    log.seal()
    log.ack(["a2"])  # its ack in the next segment: kept in the acks table
    log.append_many("events", [_event(3)], ack_id="a3")  # answered, then killed before the ack
    log.append("events", _event(4))  # no ack id: acknowledged when on disk
    log._fh.close()  # killed: the lock goes with the process, nothing is closed or published
    log._lock.close()
    FeedbackLog(cfg, "w").close()  # the replacement publishes what the WAL holds
    assert sorted(read_feedback(root, "events")["request_id"].to_pylist()) == ["r1", "r2", "r4"]
    assert read_feedback(root, "events", acknowledged=False).num_rows == 4  # r3 was logged, never acknowledged
    assert count_rows(root, "acks") == 1


def test_a_quarantined_segment_is_logged_by_path_counted_and_republished_once_fixed(tmp_path, caplog):
    import argparse

    from serving.commands.republish import register

    root, wal = tmp_path / "log", tmp_path / "wal"
    bad = wal / ".quarantine" / "w-00000000000000000001-bad.jsonl"
    bad.mkdir(parents=True)  # what got it quarantined: unreadable as a file
    with caplog.at_level("WARNING", "serving.feedback.log"):
        log = FeedbackLog(FeedbackLogConfig(root=str(root), wal_dir=str(wal)), "w")
    assert log.health()["quarantined_segments"] == 1
    assert any(str(bad) in r.getMessage() and "raycart republish" in r.getMessage() for r in caplog.records)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["republish", "--feedback", str(root), "--wal-dir", str(wal)])
    assert args.func(args) == 1 and bad.exists()  # still broken: kept, and the command says so
    bad.rmdir()
    bad.write_text('{"table": "events", "request_id": "r7", "item_id": "A", "event": "view", "timestamp": null}\n')
    assert args.func(args) == 0
    assert read_feedback(str(root), "events")["request_id"].to_pylist() == ["r7"]
    assert log.health()["quarantined_segments"] == 0 and not bad.exists()
    assert args.func(args) == 0  # nothing left: a no-op
    log.close()
    missing = parser.parse_args(["republish", "--wal-dir", str(tmp_path / "nope")])
    with pytest.raises(DataError, match="nope"):
        missing.func(missing)


def test_the_republish_command_imports_no_ray():
    code = "import sys, serving.commands.republish, serving.feedback.log; assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[4])
