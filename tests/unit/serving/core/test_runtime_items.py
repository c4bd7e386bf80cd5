"""Runtime items (no Ray): ids stable across restarts, and a record that cannot be embedded is
quarantined instead of failing every replica."""

import json

import numpy as np
import pyarrow.fs as pafs
from unit_models import N_ITEMS, VOCAB, _pipeline

from serving.core.images import ImageSource
from serving.core.index import VectorIndex
from serving.core.runtime_items import ServedModel, load_registry
from training.inference.new_items import ContentEncoder


def _store(root, n, record):
    (root / f"item-{n:09d}.json").write_text(json.dumps({**record, "position": n}))


def test_positions_come_from_the_records_not_the_listing(tmp_path):
    _store(tmp_path, 0, {"item_id": "a"})
    _store(tmp_path, 2, {"item_id": "c"})  # item 1's file is gone
    (tmp_path / "item-000000003.json").write_text("{not json")
    _store(tmp_path, 4, {"item_id": "a"})  # a second record of an id (an old race)
    _store(tmp_path, 5, {"item_id": "f"})
    records, problems = load_registry(pafs.LocalFileSystem(), str(tmp_path))
    assert [r["position"] for r in records] == [0, 1, 2, 3, 4, 5]
    assert [r["item_id"] for r in records if not r.get("quarantined")] == ["a", "c", "f"]
    assert records[5]["item_id"] == "f"  # later ids did not shift
    assert {r["position"] for r in records if r.get("quarantined")} == {1, 3, 4}
    assert len(problems) == 3 and any("missing" in p for p in problems)


def _served() -> ServedModel:
    s = object.__new__(ServedModel)  # a ServedModel over an in-memory model (no model directory)
    s.pipeline, s.version, s.applied, s.quarantined, s.images = _pipeline(), "t1", 0, set(), ImageSource(None)
    s.encoder = ContentEncoder(VOCAB, {}, None, None, read_image=ImageSource(None).read)
    s.index = VectorIndex(s.pipeline.generator.retriever.item_vecs.numpy())
    return s


def test_a_poison_record_is_quarantined_and_the_others_are_served():
    s = _served()
    records = [{"item_id": "good-1", "attributes": ["a0", "a1"], "position": 0},
               {"item_id": "poison", "attributes": ["a2"], "price": "not a number", "position": 1},
               {"item_id": "(quarantined-2)", "position": 2, "quarantined": "missing record"},
               {"item_id": "good-2", "attributes": ["a3"], "price": 4.5, "position": 3}]
    s.apply(records)
    assert s.applied == 4 and s.pipeline.num_items == N_ITEMS + 4 and len(s.index) == N_ITEMS + 4  # ids aligned
    assert s.quarantined == {N_ITEMS + 1, N_ITEMS + 2}
    vecs = s.pipeline.generator.retriever.item_vecs.numpy()
    assert np.isfinite(vecs).all()
    s.apply([{"item_id": "good-3", "attributes": ["a4"], "position": 4}])  # and it goes on
    assert s.pipeline.num_items == N_ITEMS + 5 and s.quarantined == {N_ITEMS + 1, N_ITEMS + 2}
