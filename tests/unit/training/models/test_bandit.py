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


def test_slot_two_propensities_stay_exact_with_slate_diversity():
    """With the diversity term the greedy choice of slot 2 depends on slot 1; given slot 1, the
    logged propensity is still the frequency of each item in slot 2."""
    vecs = np.array([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [0.7, 0.7], [-1.0, 0.0]])
    cfg = PolicyConfig(epsilon=0.3, context_buckets=4, diversity=2.0)
    pol = LinUCBPolicy(cfg, np.random.default_rng(3))
    counts, logged, n = {}, {}, 0
    for _ in range(20_000):
        first, second = pol.choose(ITEMS, None, k=2, item_vectors=vecs)
        if first.index == 0 and first.greedy:
            n += 1
            counts[second.index] = counts.get(second.index, 0) + 1
            logged[second.index] = second.propensity
    for i, c in counts.items():
        assert c / n == pytest.approx(logged[i], abs=0.015)
    # item 1 is a near-copy of item 0: diversity makes item 2 the greedy second choice, not item 1
    assert max(logged, key=logged.get) == 2


def test_a_pending_slate_keeps_only_its_own_rows():
    """The policy replica keeps shown features for feedback: copies of the shown rows, never a
    view of the request's whole feature matrix (which kept ~59 KB per request alive)."""
    cfg = PolicyConfig(context_buckets=8, item_features=20)
    pol = LinUCBPolicy(cfg, np.random.default_rng(0))
    items = [{"score": float(s)} for s in range(200)]
    shown = pol.choose(items, None, k=10, item_features=np.ones((200, 20)))
    assert all(s.features.base is None and s.features.nbytes == cfg.dim * 4 for s in shown)
    with pytest.raises(ValueError, match="item_features"):
        pol.choose(items, None, k=2, item_features=np.ones((3, 20)))


def test_item_priors_count_before_anything_is_learned():
    """Equal ranker scores: an untrained policy with a prior on the second item column (the
    shopper's recent click rate near the item) shows the item with the higher rate first."""
    cfg = PolicyConfig(epsilon=0.0, alpha=0.0, context_buckets=4, item_features=3, prior_item=(0.0, 2.0, 0.0))
    pol = LinUCBPolicy(cfg, np.random.default_rng(0))
    feats = np.array([[0, 0.05, 0], [0, 0.4, 0], [0, 0.1, 0]], dtype=float)
    shown = pol.choose([{"score": 1.0}] * 3, None, k=3, item_features=feats)
    assert [s.index for s in shown] == [1, 2, 0]


def test_a_per_request_floor_over_an_exploration_pool_keeps_propensities_exact():
    """A shopper whose recent answers got no engagement is explored harder, among the exploration
    candidates only: slot-1 frequencies still match the logged propensities, and items outside
    the pool are shown only as the greedy choice."""
    pol = LinUCBPolicy(PolicyConfig(epsilon=0.05, context_buckets=4), np.random.default_rng(5))
    pool = np.array([False, False, True, True, True])
    counts, logged, n = {}, {}, 20_000
    for _ in range(n):
        s = pol.choose(ITEMS, None, k=1, epsilon=0.6, explore_pool=pool)[0]
        counts[s.index] = counts.get(s.index, 0) + 1
        logged[s.index] = s.propensity
    assert set(counts) == {0, 2, 3, 4}  # the greedy item (the ranker's best) or a pool item
    for i, c in counts.items():
        assert c / n == pytest.approx(logged[i], abs=0.012)
    assert logged[0] == pytest.approx(0.4) and logged[2] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="epsilon"):
        pol.choose(ITEMS, None, k=1, epsilon=2.0)
