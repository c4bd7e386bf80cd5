"""HTTP answer models: what ``/recommend``, ``/feedback``, ``POST /items``, ``/items/{id}/similar``,
``/healthz`` and ``/readyz`` return, so the OpenAPI schema (``/openapi.json``) documents the answers
as well as the requests (:mod:`serving.core.schemas`).

The routes declare them with ``response_model=`` and ``response_model_exclude_unset=True``: an
answer carries exactly the fields the service set (``p_cart`` only from a ranker with those heads,
``session_id`` only for a session), and a field the service did not promise fails loudly in tests.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Reason(BaseModel):
    because_you_saw: str | None = Field(description="the history item this one is most like (None: no history)")
    shared: list[str] = Field(description="attributes the two items share")


class RecommendedItem(BaseModel):
    item_id: str
    title: str
    position: int = Field(description="0-based slot in the answer")
    score: float = Field(description="the ranker's score")
    propensity: float = Field(description="probability that the policy put this item in this slot (logged for OPE)")
    greedy: bool = Field(description="whether the slot holds the policy's greedy choice (not an exploration)")
    reason: Reason
    p_cart: float | None = Field(None, description="the ranker's probability of a cart event (multi-head rankers)")
    p_purchase: float | None = Field(None, description="the ranker's probability of a purchase")


class RecommendAnswer(BaseModel):
    request_id: str = Field(description="names this answer in /feedback")
    user_known: bool = Field(description="whether user_id is in the catalogue's history")
    items: list[RecommendedItem]
    model_version: str
    policy_version: str = Field(description="'ranker-order' while the policy was unreachable")
    state: Literal["live", "off", "unavailable"] = Field(description="how the real-time user state was read")
    live_history: int = Field(description="items engaged with since training that this answer used")
    explore_harder: bool = Field(description="whether the shopper had stopped engaging, so exploration was raised")
    session_id: str | None = Field(None, description="the anonymous session (sent back in later requests)")
    session_token: str | None = Field(None, description="the session's shopper token (when shopper tokens are on)")


class FeedbackAnswer(BaseModel):
    status: Literal["recorded", "duplicate"]
    learned: bool = Field(description="whether the policy learned from it")
    history: bool = Field(description="whether it joins the shopper's real-time history")


class ItemAdded(BaseModel):
    item_id: str
    status: Literal["added"]
    items_added: int = Field(description="items added at runtime so far")


class SimilarItem(BaseModel):
    item_id: str
    title: str


class SimilarAnswer(BaseModel):
    item_id: str
    similar: list[SimilarItem]


class Health(BaseModel):
    status: Literal["ok"]


class FeedbackLogHealth(BaseModel):
    ok: bool
    unpublished_segments: int
    corrupt_lines: int
    quarantined_segments: int
    error: str | None = None


class Readiness(BaseModel):
    status: Literal["ready", "degraded", "not ready"]
    items: int
    model_version: str
    user_state: Literal["ok", "unavailable"]
    feedback_log: FeedbackLogHealth
    rate_limits: dict = Field(description="each limit's setting (None: off) and the requests it refused")
