"""The closed-loop simulator's bookkeeping (no app needed) and the request models' number checks."""

import math

import pytest
from pydantic import ValidationError

from serving.commands.simulator import SimConfig, summarize
from serving.core.schemas import FeedbackRequest, NewItem, RecommendRequest


def _rounds(shares: list[float], drift_after: int) -> list[dict]:
    return [{"round": i + 1, "phase": "drift" if i >= drift_after else "stationary", "taste_share": s,
             "chance_share": 0.1, "ctr": s / 2, "reward_per_item": s, "failed_requests": 0}
            for i, s in enumerate(shares)]


def test_recovery_is_the_first_drift_round_at_80_percent_of_the_stationary_share():
    cfg = SimConfig(rounds=7, drift_after=3)
    s = summarize(_rounds([0.6, 0.6, 0.6, 0.05, 0.2, 0.47, 0.5], 3), cfg)  # 80 % of 0.6 = 0.48
    assert s["stationary_share"] == pytest.approx(0.6)
    assert s["rounds_to_recover"] == 4
    s = summarize(_rounds([0.6, 0.6, 0.6, 0.05, 0.2, 0.3, 0.4], 3), cfg)
    assert s["rounds_to_recover"] is None and s["drift_share_last"] == 0.4


def test_bad_configs_are_refused():
    with pytest.raises(ValueError):
        SimConfig(rounds=3, drift_after=5)
    with pytest.raises(ValueError, match="p_click_taste"):
        SimConfig(p_click_taste=1.5)


@pytest.mark.parametrize("model,body", [
    (RecommendRequest, {"k": math.nan}), (RecommendRequest, {"context": {"x": math.inf}}),
    (RecommendRequest, {"filters": {"price_max": -math.inf}}), (NewItem, {"item_id": "a", "price": math.inf}),
    (NewItem, {"item_id": "a", "price": math.nan}), (FeedbackRequest, {"request_id": "r", "item_id": "i",
                                                                       "event": "click", "extra": 1}),
])
def test_nan_infinity_and_extra_fields_are_refused(model, body):
    with pytest.raises(ValidationError):
        model.model_validate(body)


def test_a_url_without_a_host_is_refused():
    from serving.commands.simulator import _Client

    with pytest.raises(ValueError, match="host"):
        _Client("127.0.0.1:8000", timeout=1.0)  # no scheme: urlparse finds no hostname
    assert _Client("http://127.0.0.1:8000", timeout=1.0).host == "127.0.0.1"


def _shop():
    from serving.commands.simulator import Shop

    cats = [f"c{j}" for j in range(6)]
    items = {f"i{j}": cats[j % 6] for j in range(60)}
    return Shop(items, {f"u{u}": {cats[u % 6]} for u in range(30)}, cats)


def test_gradual_drift_moves_the_weight_over_the_span():
    from serving.commands.simulator import _weights

    cfg = SimConfig(rounds=8, drift_after=2, drift_span=3)
    old, new = {"a": 1.0}, {"b": 1.0}
    assert _weights(old, new, 1, cfg) == old
    w = _weights(old, new, 2, cfg)  # first drift round: a third of the way
    assert w["a"] == pytest.approx(2 / 3) and w["b"] == pytest.approx(1 / 3)
    assert _weights(old, new, 4, cfg) == {"b": 1.0}
    assert _weights(old, new, 2, SimConfig(rounds=8, drift_after=2)) == {"b": 1.0}  # abrupt by default


def test_hard_simulator_validates_and_second_tastes_and_nonclickers_are_drawn():
    import numpy as np

    from serving.commands.simulator import _tastes

    with pytest.raises(ValueError, match="satiation"):
        SimConfig.hard(satiation=2.0)
    with pytest.raises(ValueError, match="drift_span"):
        SimConfig(drift_span=0)
    shop, cfg = _shop(), SimConfig.hard(shoppers=30)
    chosen = sorted(shop.tastes)
    before, after, quiet = _tastes(shop, chosen, cfg, np.random.default_rng(0))
    assert len(quiet) == 3  # 10 % of 30
    for u in chosen:
        assert sorted(before[u].values()) == [0.5, 1.0]  # the planted taste and a second one at 0.5
        (new,) = after[u]
        assert new not in before[u]  # the drift goes somewhere new


def test_the_oracle_searches_untried_categories_then_exploits():
    from serving.commands.simulator import Oracle

    shop = _shop()
    oracle = Oracle(shop, share=1.0, seed=0)
    assert {shop.item_category[x] for x in oracle.slate("u0", {"c0": 1.0}, k=5)} == {"c0"}  # exploits
    oracle.moved("u0", new={"c3"}, old={"c0"})
    first = [shop.item_category[x] for x in oracle.slate("u0", {"c3": 1.0}, k=3)]
    assert len(set(first)) == 3 and "c0" not in first  # one item of each untried category
    second = [shop.item_category[x] for x in oracle.slate("u0", {"c3": 1.0}, k=3)]
    assert set(first) | set(second[:2]) == {"c1", "c2", "c3", "c4", "c5"}  # the rest, then a new cycle
    assert second[2] != "c0"  # the old taste is never searched, and the known new one is not used
    oracle.clicked("u0", "c3")
    assert {shop.item_category[x] for x in oracle.slate("u0", {"c3": 1.0}, k=5)} == {"c3"}
    with pytest.raises(ValueError, match="share"):
        Oracle(shop, share=0.0)


def test_the_oracle_bounds_recovery_in_a_whole_simulation():
    """Against the oracle the shoppers find their new taste in the first drift rounds."""
    from serving.commands.simulator import Oracle, simulate

    shop = _shop()
    cfg = SimConfig(rounds=6, drift_after=2, shoppers=30, k=5, concurrency=1, p_click_taste=0.5)
    res = simulate(Oracle(shop, share=0.9, seed=1), shop, cfg, progress=lambda _: None)
    shares = [r["taste_share"] for r in res["rounds"]]
    assert min(shares[:2]) > 0.8  # stationary: exploits at 0.9
    assert shares[-1] > 0.7 and shares[-1] > shares[2]  # recovered after the switch
