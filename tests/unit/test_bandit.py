"""The LinUCB slate policy: exact propensities, learning from feedback, seeded, restorable."""

import numpy as np
import pytest

from training.models.bandit import LinUCBPolicy, PolicyConfig

ITEMS = [{"score": s, "retriever_rank": i} for i, s in enumerate([3.0, 2.5, 2.0, 1.0, 0.5])]


def test_propensities_match_the_empirical_slot_frequencies():
    cfg = PolicyConfig(epsilon=0.3, context_buckets=4)
    pol = LinUCBPolicy(cfg, np.random.default_rng(1))
    counts, logged = {}, {}
    n = 20_000
    for _ in range(n):
        for s in pol.choose(ITEMS, {"device": "app"}, k=2):
            if s.position == 0:
                counts[s.index] = counts.get(s.index, 0) + 1
                logged[s.index] = s.propensity
    # slot 0: the greedy item with 1 - eps + eps/5, every other item eps/5
    for i, c in counts.items():
        assert c / n == pytest.approx(logged[i], abs=0.01)
    assert sum(logged.values()) == pytest.approx(1.0)


def test_feedback_moves_the_slate_towards_what_gets_bought():
    """Clicks go to the lowest-scored item whenever the context says 'app': the policy must learn
    to put it first for that context, and keep the ranker's order for 'web'."""
    pol = LinUCBPolicy(PolicyConfig(epsilon=0.2, alpha=0.1, context_buckets=16), np.random.default_rng(0))
    for _ in range(400):
        for device in ("app", "web"):
            shown = pol.choose(ITEMS, {"device": device}, k=3)
            pol.observe_impression(shown)
            liked = 4 if device == "app" else 0
            for s in shown:
                if s.index == liked:
                    pol.observe_feedback(s.features, "purchase")
    greedy = LinUCBPolicy(PolicyConfig(epsilon=0.0, alpha=0.1, context_buckets=16), np.random.default_rng(0))
    greedy.A, greedy.b = pol.A, pol.b
    assert greedy.choose(ITEMS, {"device": "app"}, k=1)[0].index == 4
    assert greedy.choose(ITEMS, {"device": "web"}, k=1)[0].index == 0


def test_seeded_and_restorable():
    a = LinUCBPolicy(PolicyConfig.tiny(), np.random.default_rng(7))
    b = LinUCBPolicy(PolicyConfig.tiny(), np.random.default_rng(7))
    for _ in range(20):
        sa, sb = a.choose(ITEMS, None, 3), b.choose(ITEMS, None, 3)
        assert [s.index for s in sa] == [s.index for s in sb]
        for pol, shown in ((a, sa), (b, sb)):
            pol.observe_impression(shown)
            pol.observe_feedback(shown[-1].features, "click")
    restored = LinUCBPolicy.from_bytes(a.state_bytes(), PolicyConfig.tiny())
    np.testing.assert_array_equal(restored.A, a.A)
    assert restored.updates == a.updates
    # the restored generator continues the same random stream
    assert [s.index for s in restored.choose(ITEMS, None, 3)] == [s.index for s in a.choose(ITEMS, None, 3)]
    with pytest.raises(ValueError, match="saved with"):
        LinUCBPolicy.from_bytes(a.state_bytes(), PolicyConfig(epsilon=0.5))
    with pytest.raises(ValueError, match="unknown event"):
        a.observe_feedback(sa[0].features, "like")
    with pytest.raises(ValueError, match="epsilon"):
        PolicyConfig(epsilon=1.5)
