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
