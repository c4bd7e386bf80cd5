"""``PolicyCopy``: the policy's choice from a copy of the learner's parameters (AppArgs.policy_copy_s),
without Ray: same choice as the learner, exact propensities, impressions and feedback still learned;
``CopyChooser``: one refresh at a time, and backpressure when the learner falls behind."""

import asyncio
import collections
import time

import numpy as np

from serving.core.messages import PolicyQuery
from serving.core.policy import CopyChooser, PolicyCopy, PolicyCore
from serving.core.schemas import AppArgs


def _args(tmp_path, **extra) -> AppArgs:
    return AppArgs(model_dir="(in memory)", data_dir="(in memory)", policy_state=str(tmp_path / "policy.npz"),
                   policy_item_dim=0, policy_diversity=0.0, **extra)


def _query(request_id: str, n: int = 6, seed: int = 0) -> PolicyQuery:
    rng = np.random.default_rng(seed)
    return PolicyQuery(request_id=request_id, item_ids=[f"i{j}" for j in range(n)], scores=rng.normal(size=n),
                       retriever_rank=np.arange(n), context={}, k=3)


def test_a_fresh_copy_chooses_what_the_learner_would(tmp_path):
    learner = PolicyCore(_args(tmp_path, policy_epsilon=0.0), background=False)
    for r in range(30):  # some learning first: clicks on the lowest-scored item of each request
        q = _query(f"r{r}", seed=r)
        learner.choose(q)
        learner.feedback(f"r{r}", q.item_ids[int(np.argmin(q.scores))], "purchase")
    copy = PolicyCopy(_args(tmp_path, policy_epsilon=0.0), np.random.default_rng(1))
    copy.install(learner.parameters(), 0.0)
    q = _query("next", seed=99)
    want = learner.parameters()
    slate, shown = copy.choose(q)
    assert slate.policy_version == want.version  # the log names the parameters that chose
    again = learner.choose(_query("same", seed=99))
    assert [s.index for s in slate.slots] == [s.index for s in again.slots]
    assert all(s.propensity == 1.0 for s in slate.slots)
    assert set(shown) == {q.item_ids[s.index] for s in slate.slots}


def test_impressions_chosen_by_a_copy_are_learned_and_take_feedback(tmp_path):
    learner = PolicyCore(_args(tmp_path, policy_copy_s=1.0), background=False)
    copy = PolicyCopy(_args(tmp_path), np.random.default_rng(0))
    copy.install(learner.parameters(), 0.0)
    before = learner.policy.updates
    slate, shown = copy.choose(_query("r1"))
    first, second = list(shown)[:2]
    assert not learner.feedback("r1", first, "click")  # the click overtook the impression: parked
    learner.remember("r1", shown)
    assert learner.policy.updates == before + len(shown) + 1  # the impression, then the parked click
    b_before = learner.policy.b.copy()
    assert learner.feedback("r1", second, "click")
    assert not np.allclose(learner.policy.b, b_before)
    assert learner.parameters().version != slate.policy_version  # the copy is now stale, and says so
    frozen = PolicyCore(_args(tmp_path / "f", policy_learning=False), background=False)
    frozen.remember("r2", shown)
    assert frozen.policy.updates == 0 and not frozen.feedback("r2", next(iter(shown)), "click")


def test_the_copy_logs_exact_propensities(tmp_path):
    """Each logged propensity is the probability the copy's own draws give that item at that slot."""
    learner = PolicyCore(_args(tmp_path, policy_epsilon=0.3), background=False)
    copy = PolicyCopy(_args(tmp_path, policy_epsilon=0.3), np.random.default_rng(5))
    copy.install(learner.parameters(), 0.0)
    q = _query("r", n=5, seed=3)
    first = collections.Counter()
    logged = {}
    n = 4000
    for _ in range(n):
        slate, _ = copy.choose(q)
        top = slate.slots[0]
        first[top.index] += 1
        logged[top.index] = top.propensity
    for item, count in first.items():
        assert abs(count / n - logged[item]) < 0.03, (item, count / n, logged[item])
    assert abs(sum(logged.values()) - 1.0) < 1e-9  # every item seen at the top; propensities sum to 1


# -- CopyChooser: one refresh at a time, backpressure towards the learner (no Ray) --------------


class _Learner:
    """The learner's two remote calls, as coroutines: ``parameters`` (slow on request) and
    ``remember`` (held until released)."""

    def __init__(self, tmp_path, fetch_delay_s: float = 0.0):
        self.core = PolicyCore(_args(tmp_path, policy_epsilon=0.0), background=False)
        self.fetches, self.remembered = 0, []
        self.fetch_delay_s = fetch_delay_s
        self.release = asyncio.Event()

    async def parameters(self):
        self.fetches += 1
        await asyncio.sleep(self.fetch_delay_s)
        return self.core.parameters()

    async def remember(self, request_id, shown):
        await self.release.wait()
        self.remembered.append(request_id)


def test_the_chooser_fetches_once_for_many_waiting_requests_and_hands_every_impression_back(tmp_path):
    async def run():
        learner = _Learner(tmp_path, fetch_delay_s=0.05)
        learner.release.set()
        chooser = CopyChooser(PolicyCopy(_args(tmp_path, policy_copy_s=60.0)), learner.parameters, learner.remember)
        slates = await asyncio.gather(*(chooser.choose(_query(f"r{i}", seed=i)) for i in range(20)))
        await asyncio.gather(*list(chooser.background))
        return learner, slates

    learner, slates = asyncio.run(run())
    assert learner.fetches == 1  # twenty requests waited for the same first copy
    assert all(s.policy_version == slates[0].policy_version for s in slates)
    assert sorted(learner.remembered) == sorted(f"r{i}" for i in range(20))


def test_a_learner_that_falls_behind_slows_requests_down_instead_of_queueing_without_end(tmp_path):
    async def run():
        learner = _Learner(tmp_path)  # remember() never returns until released
        chooser = CopyChooser(PolicyCopy(_args(tmp_path, policy_copy_s=60.0)), learner.parameters, learner.remember,
                              wait_s=0.2, max_pending=3)
        for i in range(3):
            await chooser.choose(_query(f"r{i}", seed=i))
        pending = len(chooser.background)
        started = time.monotonic()
        slate = await chooser.choose(_query("r3", seed=3))  # the fourth waits for its own impression
        waited = time.monotonic() - started
        learner.release.set()
        await asyncio.gather(*list(chooser.background))
        return pending, waited, slate, learner, chooser

    pending, waited, slate, learner, chooser = asyncio.run(run())
    assert pending == 3 and len(chooser.background) == 0
    assert 0.15 <= waited < 2.0 and slate.slots  # bounded wait, then answered all the same
    assert sorted(learner.remembered) == ["r0", "r1", "r2"]  # the fourth's was given up, not queued


def test_a_failed_first_fetch_fails_the_waiting_requests_and_the_next_one_fetches_again(tmp_path):
    calls = []

    async def broken():
        calls.append(1)
        raise ConnectionError("learner restarting")

    async def run():
        chooser = CopyChooser(PolicyCopy(_args(tmp_path, policy_copy_s=60.0)), broken, lambda *_: asyncio.sleep(0))
        results = await asyncio.gather(*(chooser.choose(_query(f"r{i}")) for i in range(5)), return_exceptions=True)
        again = await asyncio.gather(chooser.choose(_query("r9")), return_exceptions=True)
        return results, again

    results, again = asyncio.run(run())
    assert all(isinstance(r, ConnectionError) for r in results) and isinstance(again[0], ConnectionError)
    assert len(calls) == 2  # one shared fetch for the five, a new one for the next request
