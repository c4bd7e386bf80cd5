"""The retrain schedule's rule and the log count it reads (no Ray cluster)."""

import pyarrow as pa
import pyarrow.parquet as pq

from serving.deploy.retrain_trigger import RetrainSchedule
from training.data.feedback import count_rows


def test_due_after_n_events_or_t_minutes_with_new_events():
    s = RetrainSchedule(every_events=5, every_minutes=None)
    s.start(events=100, now=0.0)
    assert not s.due(104, 1e9) and s.due(105, 1.0)
    s.start(105, 1.0)
    assert not s.due(105, 1e9)  # nothing new
    t = RetrainSchedule(every_events=None, every_minutes=10)
    t.start(0, now=1000.0)
    assert not t.due(3, 1000.0 + 599) and t.due(3, 1000.0 + 600)
    assert not t.due(0, 1e9)  # a quiet log never retrains
    both = RetrainSchedule(every_events=50, every_minutes=10)
    both.start(0, 0.0)
    assert both.due(50, 1.0) and both.due(1, 600.0) and not both.due(49, 599.0)
    assert not RetrainSchedule(None, None).enabled and both.enabled


def test_count_rows_reads_the_footers_of_published_parts(tmp_path):
    assert count_rows(str(tmp_path), "events") == 0  # no log yet
    (tmp_path / "events").mkdir()
    for i, n in enumerate((3, 4)):
        pq.write_table(pa.table({"request_id": [f"r{j}" for j in range(n)]}), tmp_path / "events" / f"p{i}.parquet")
    (tmp_path / "events" / ".p2.parquet.tmp").write_bytes(b"half")  # not published: not counted
    assert count_rows(str(tmp_path), "events") == 7
