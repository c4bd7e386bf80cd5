"""One request, one model version, and answers while a single-replica deployment restarts: the
rollout mechanics of :mod:`serving.core.retrieve_rank` without Ray (the Serve rollouts themselves are in
``tests/integration/test_serve.py``)."""

import asyncio
import pickle

import numpy as np
import pytest

from serving.core.messages import ModelVersionMismatch, PolicyQuery, RankedList, RankQuery
from serving.core.policy import FALLBACK_POLICY, ranker_order
from serving.core.retrieve_rank import ModelHolder, Ranking
from serving.core.schemas import AppArgs


class Model:
    """What :class:`ModelHolder` needs of a :class:`~serving.core.runtime_items.ServedModel`."""

    def __init__(self, version: str):
        self.version, self.applied, self.index, self.records = version, 0, None, []

    def apply(self, records: list[dict]) -> None:
        self.records += records
        self.applied += len(records)


def holder(grace_s: float = 60.0, registry: list[dict] | None = None) -> ModelHolder:
    records = registry if registry is not None else []

    async def since(n: int) -> list[dict]:
        return records[n:]

    return ModelHolder(AppArgs(model_dir="m", data_dir="d"), since, with_index=False, grace_s=grace_s)


def test_the_replaced_version_is_held_for_its_grace_then_dropped():
    h = holder()
    v1, v2 = Model("v1"), Model("v2")
    h.install(v1)
    assert h.held() == ("v1",)
    h.install(v2)
    assert h.held() == ("v2", "v1")
    assert h.pick("v1", strict=True) is v1 and h.pick("v2", strict=True) is v2 and h.pick(None, strict=True) is v2
    with pytest.raises(ModelVersionMismatch) as err:
        h.pick("v0", strict=True)
    assert err.value.held == ("v2", "v1") and "v0" in str(err.value)
    assert h.pick("v0", strict=False) is v2  # retrieval: the current model
    h.previous_until = 0.0  # its grace is over
    assert h.held() == ("v2",) and h.previous is None
    with pytest.raises(ModelVersionMismatch):
        h.pick("v1", strict=True)


def test_reinstalling_the_same_version_keeps_no_second_copy():
    h = holder()
    h.install(Model("v1"))
    h.install(Model("v1"))
    assert h.held() == ("v1",) and h.previous is None


def test_catch_up_applies_every_runtime_item_before_traffic():
    h = holder(registry=[{"item_id": "a"}, {"item_id": "b"}])
    h.install(Model("v1"))
    asyncio.run(h.catch_up())
    assert h.served is not None and h.served.applied == 2
    old = h.served
    h.install(Model("v2"))
    assert asyncio.run(h.current(2, "v1", strict=True)) is old  # the held version is served its items too


class VersionRanking(Ranking):
    """Ranking whose "model" only says which version ranked each query."""

    def compute(self, s, queries):
        return [RankedList(s.version, np.arange(len(q.items)), np.zeros(len(q.items)), []) for q in queries]


def test_each_query_is_ranked_by_the_version_that_retrieved_it():
    h = holder()
    h.install(Model("v1"))
    h.install(Model("v2"))
    ranking = VersionRanking(h)
    q = {"history": np.array([1], np.int64), "items": np.array([2, 3], np.int64),
         "dense": np.zeros((2, 1), np.float32)}
    out = asyncio.run(ranking.rank([RankQuery(**q, model_version="v1"), RankQuery(**q, model_version="v2"),
                                    RankQuery(**q, model_version="v9"), RankQuery(**q)]))
    assert [o.model_version if isinstance(o, RankedList) else o.held for o in out] == \
        ["v1", "v2", ("v2", "v1"), "v2"]


def test_the_mismatch_survives_pickling_with_its_type():
    err = pickle.loads(pickle.dumps(ModelVersionMismatch("v1", ("v3", "v2"))))
    assert isinstance(err, ModelVersionMismatch) and err.wanted == "v1" and err.held == ("v3", "v2")


def test_without_the_policy_the_slate_is_the_rankers_order_with_certainty():
    q = PolicyQuery(request_id="r1", item_ids=["a", "b", "c"], scores=np.array([3.0, 2.0, 1.0]),
                    retriever_rank=np.arange(3), context={}, k=2)
    slate = ranker_order(q)
    assert slate.policy_version == FALLBACK_POLICY
    assert [(s.index, s.position, s.propensity, s.greedy) for s in slate.slots] == [(0, 0, 1.0, True),
                                                                                    (1, 1, 1.0, True)]
    assert len(ranker_order(PolicyQuery(request_id="r2", item_ids=["a"], scores=np.array([1.0]),
                                             retriever_rank=np.arange(1), context={}, k=5)).slots) == 1


@pytest.mark.parametrize("field,value", [("rollout_surge_percent", 101), ("rollout_surge_percent", -1),
                                         ("singleton_wait_s", 0)])
def test_rollout_settings_are_validated(field, value):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=field):
        AppArgs(model_dir="m", data_dir="d", **{field: value})


def test_a_write_that_failed_part_way_does_not_swallow_the_next_one(tmp_path, monkeypatch):
    """Disk full half-way through a journal line: the next acknowledged write starts on a line of
    its own, so a restart reads it (the fragment is counted, not glued onto it)."""
    import os

    from serving.state.journal import Journal

    journal = Journal(tmp_path)
    journal.open_next()
    journal.append(["a", 1])
    real = os.write

    def half(fd, data):
        real(fd, bytes(data[:5]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", half)
    with pytest.raises(OSError):
        journal.append(["lost", 2])
    monkeypatch.setattr(os, "write", real)
    journal.append(["b", 3])
    journal.close()
    again = Journal(tmp_path)
    assert list(again.replay(0)) == [["a", 1], ["b", 3]] and again.skipped == 1
