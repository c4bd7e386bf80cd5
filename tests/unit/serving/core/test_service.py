"""``RecommendService`` in one process, without Ray: the whole request path over a small model,
the real user state, the real feedback log and the real policy."""

import asyncio
import contextlib
import math
import threading
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient
from test_runtime_items import _served
from unit_models import N_ITEMS, _train

from serving.core.catalog import Catalog
from serving.core.local import LocalBackend, LocalState
from serving.core.schemas import AppArgs, FeedbackRequest, NewItem, RecommendRequest
from serving.core.service import RecommendService, ServiceError
from serving.feedback.log import FeedbackLog, FeedbackLogConfig
from serving.state.memory import MemoryUserState
from serving.state.user_state import StateUnavailable, UserStateConfig, stale_strength
from training.data.feedback import read_feedback


def _catalog() -> Catalog:
    train = _train()
    ids = [f"i{j}" for j in range(N_ITEMS)]
    return Catalog(ids, {x: j for j, x in enumerate(ids)}, [f"item {j}" for j in range(N_ITEMS)],
                   [f"c{j % 3}" for j in range(N_ITEMS)], np.linspace(1, 30, N_ITEMS),
                   {f"u{u}": u for u in range(train.num_users)}, train, N_ITEMS)


class App:
    def __init__(self, tmp_path: Path, state=None, append=None, **extra):
        """The service over the real stages, log and (unless ``state``) user state; ``append``
        replaces the log's append (set to the HTTP edge's by :func:`served`)."""
        self.args = AppArgs(model_dir="(in memory)", data_dir="(in memory)", policy_state=str(tmp_path / "policy.npz"),
                            items_root=str(tmp_path / "items"), **extra)
        self.log = FeedbackLog(FeedbackLogConfig(root=str(tmp_path / "feedback"), wal_dir=str(tmp_path / "wal")),
                               "test")
        self.backend = LocalBackend(self.args, offload=False, served=_served())
        self.root = tmp_path

        async def append_to_log(table, records):
            self.log.append_many(table, records)

        self.service = RecommendService(self.args, _catalog(), self.backend,
                                        state or LocalState(MemoryUserState(UserStateConfig())),
                                        append or append_to_log)

    def run(self, coro):
        return asyncio.run(coro)

    def recommend(self, **req):
        return self.run(self.service.recommend(RecommendRequest(**req)))

    def feedback(self, **req):
        return self.run(self.service.feedback(FeedbackRequest(**req)))


@pytest.fixture
def app(tmp_path):
    return App(tmp_path, policy_epsilon=0.0, policy_alpha=0.0, policy_diversity=0.0, explore_candidates=0,
               stale_alpha=0.0)


def test_a_known_user_gets_a_logged_slate_of_unseen_items(app):
    body = app.recommend(user_id="u3", k=5, context={"device": "web"})
    items = [o["item_id"] for o in body["items"]]
    history = {f"i{j}" for j in _train().row(3)}
    assert len(items) == 5 == len(set(items)) and not history & set(items)
    assert [o["position"] for o in body["items"]] == list(range(5))
    assert all(o["propensity"] == 1.0 and o["greedy"] for o in body["items"])  # epsilon 0
    scores = [o["score"] for o in body["items"]]
    assert scores == sorted(scores, reverse=True)  # greedy over the ranker's order (no learning yet)
    assert body["model_version"] == "t1" and body["user_known"] and body["state"] == "live"
    assert all(o["reason"]["because_you_saw"] in history for o in body["items"])
    app.log.close()
    logged = read_feedback(str(app.root / "feedback"), "impressions")
    assert logged["item_id"].to_pylist() == items and set(logged["request_id"].to_pylist()) == {body["request_id"]}


def test_feedback_enters_the_history_and_the_policy_and_is_checked(app):
    before = app.recommend(user_id="u1", k=4)
    bought = before["items"][-1]["item_id"]
    assert app.feedback(request_id=before["request_id"], item_id=bought, event="purchase") == \
        {"status": "recorded", "learned": True, "history": True}
    assert app.feedback(request_id=before["request_id"], item_id=bought, event="purchase")["status"] == "duplicate"
    after = app.recommend(user_id="u1", k=4)
    assert after["live_history"] == 1 and bought not in [o["item_id"] for o in after["items"]]
    assert after["policy_version"] != before["policy_version"]
    with pytest.raises(ServiceError) as e:
        app.feedback(request_id="never", item_id="i0", event="click")
    assert e.value.status == 404
    shown = {o["item_id"] for o in after["items"]}
    other = next(f"i{j}" for j in range(N_ITEMS) if f"i{j}" not in shown)
    with pytest.raises(ServiceError) as e:
        app.feedback(request_id=after["request_id"], item_id=other, event="click")
    assert e.value.status == 400 and "did not show" in e.value.detail
    with pytest.raises(ServiceError) as e:
        app.feedback(request_id=after["request_id"], item_id="no-such-item", event="click")
    assert e.value.status == 400 and "unknown item" in e.value.detail


def test_filters_sessions_and_bad_ids(app):
    body = app.recommend(user_id="u2", k=5, filters={"category": "c1", "price_max": 20})
    cat = _catalog()
    for o in body["items"]:
        j = cat.item_index[o["item_id"]]
        assert cat.categories[j] == "c1" and cat.prices[j] <= 20
    excluded = app.recommend(user_id="u2", k=5, filters={"exclude": [o["item_id"] for o in body["items"]]})
    assert not {o["item_id"] for o in body["items"]} & {o["item_id"] for o in excluded["items"]}
    anon = app.recommend(history=["i0", "i1"], k=3)
    assert anon["session_id"] and not anon["user_known"] and not {"i0", "i1"} & {o["item_id"] for o in anon["items"]}
    for req in ({"history": ["i0", "nope"]}, {"user_id": "u2", "filters": {"exclude": ["nope"]}}):
        with pytest.raises(ServiceError) as e:
            app.recommend(**req)
        assert e.value.status == 400 and "nope" in e.value.detail


def test_items_added_at_runtime_are_similar_and_recommendable(app):
    new = NewItem(item_id="new-1", attributes=["a0", "a1"], price=3.0, category="c0")
    assert app.run(app.service.add_item(new))["items_added"] == 1
    with pytest.raises(ServiceError) as e:
        app.run(app.service.add_item(new))
    assert e.value.status == 409
    with pytest.raises(ServiceError) as e:
        app.run(app.service.add_item(NewItem(item_id="empty")))
    assert e.value.status == 400 and "no content" in e.value.detail
    similar = app.run(app.service.similar("new-1", k=5))["similar"]
    assert len(similar) == 5 and "new-1" not in [s["item_id"] for s in similar]
    body = app.recommend(history=[s["item_id"] for s in similar[:3]], k=N_ITEMS)
    assert "new-1" in [o["item_id"] for o in body["items"]]  # retrieved and ranked among the rest
    with pytest.raises(ServiceError) as e:
        app.run(app.service.similar("nope"))
    assert e.value.status == 404


class DownState:
    async def _down(self, *a):
        raise StateUnavailable("down")

    view = issue = check = record = _down

    async def ping(self):
        return False


def test_a_state_backend_that_is_down_degrades_answers_and_refuses_feedback(tmp_path):
    app = App(tmp_path, state=DownState())
    body = app.recommend(user_id="u1", k=3)
    assert body["state"] == "unavailable" and len(body["items"]) == 3
    with pytest.raises(ServiceError) as e:
        app.feedback(request_id=body["request_id"], item_id=body["items"][0]["item_id"], event="click")
    assert e.value.status == 503
    assert app.run(app.service.readiness()) == ("t1", False)


def test_a_log_that_cannot_be_written_acknowledges_nothing(tmp_path):
    async def broken(table, records):
        raise ServiceError(503, "could not be recorded durably")

    state = LocalState(MemoryUserState(UserStateConfig()))
    app = App(tmp_path, state=state, append=broken)
    with pytest.raises(ServiceError) as e:
        app.recommend(user_id="u1", k=3)
    assert e.value.status == 503
    assert not state.state.requests  # nothing issued: no feedback can refer to an unlogged answer


def test_feedback_is_checked_against_the_shopper_it_acts_for_and_the_cap(tmp_path):
    broken = [True]
    state = LocalState(MemoryUserState(UserStateConfig()))

    async def append(table, records):
        if table == "events" and broken[0]:
            raise ServiceError(503, "could not be recorded durably")

    app = App(tmp_path, state=state, append=append, feedback_per_request=1)
    body = app.recommend(user_id="u1", k=3)
    req = FeedbackRequest(request_id=body["request_id"], item_id=body["items"][0]["item_id"], event="click")
    with pytest.raises(ServiceError) as e:
        app.run(app.service.feedback(req, identity="u:u2"))
    assert e.value.status == 403 and not state.state.requests[body["request_id"]].done  # nothing recorded
    with pytest.raises(ServiceError) as e:
        app.run(app.service.feedback(req, identity="u:u1"))
    assert e.value.status == 503
    broken[0] = False  # the event the log refused did not use up the answer's one event
    assert app.run(app.service.feedback(req, identity="u:u1"))["status"] == "recorded"
    with pytest.raises(ServiceError) as e:
        app.feedback(request_id=body["request_id"], item_id=body["items"][1]["item_id"], event="click")
    assert e.value.status == 400 and "feedback_per_request" in e.value.detail


# -- through the HTTP edge: what the client was told decides what counts ---------------------------


@contextlib.contextmanager
def served(app: App, feedback_log=None):
    """A client of ``api`` serving ``app`` with the service appending through the edge's log
    (``feedback_log``, else ``app.log``); the edge is closed (acks written, log published) after."""
    from serving.edge.http import EdgeLog, Runtime, configure

    edge = EdgeLog(feedback_log or app.log)
    app.service.append = edge.append
    api = configure(Runtime(app.service, edge), app.args.model_copy(update={"trust_loopback": True}))
    try:
        with TestClient(api, base_url="http://127.0.0.1", client=("127.0.0.1", 5000)) as client:
            yield client
    finally:
        edge.close()


class Gated(LocalState):
    """The real in-memory user state, whose ``issue`` can be made slow and ``record`` fail."""

    def __init__(self):
        super().__init__(MemoryUserState(UserStateConfig()))
        self.slow_issue_s, self.record_down = 0.0, False

    async def issue(self, request_id, key, items):
        await asyncio.sleep(self.slow_issue_s)
        await super().issue(request_id, key, items)

    async def record(self, request_id, item_id, event):
        if self.record_down:
            raise StateUnavailable("down")
        return await super().record(request_id, item_id, event)


def test_a_request_the_guard_answers_504_after_its_append_is_not_counted(tmp_path):
    state = Gated()
    app = App(tmp_path, state=state, request_timeout_s=0.5)
    with served(app) as client:
        ok = client.post("/recommend", json={"user_id": "u1", "k": 3})
        state.slow_issue_s = 5.0  # logged, then stuck past the deadline
        late = client.post("/recommend", json={"user_id": "u2", "k": 3})
    assert ok.status_code == 200 and late.status_code == 504
    root = str(tmp_path / "feedback")
    assert set(read_feedback(root, "impressions", dedupe=False)["request_id"].to_pylist()) == {ok.json()["request_id"]}
    assert read_feedback(root, "impressions", acknowledged=False).num_rows == 6  # both were logged


def test_feedback_logged_then_refused_503_is_not_counted_but_its_retry_is(tmp_path):
    state = Gated()
    app = App(tmp_path, state=state)
    with served(app) as client:
        body = client.post("/recommend", json={"user_id": "u1", "k": 3}).json()
        click = {"request_id": body["request_id"], "item_id": body["items"][0]["item_id"], "event": "click"}
        state.record_down = True
        refused = client.post("/feedback", json=click)  # logged, then the state record fails
        assert refused.status_code == 503 and "logged but not applied" in refused.json()["detail"]
        state.record_down = False
        retried = client.post("/feedback", json=click)
    assert retried.status_code == 200 and retried.json()["status"] == "recorded"
    root = str(tmp_path / "feedback")
    counted = read_feedback(root, "events", dedupe=False)
    assert counted.num_rows == 1  # of the two copies logged, the one whose 200 went out
    logged = read_feedback(root, "events", dedupe=False, acknowledged=False)
    assert logged.num_rows == 2 and counted["timestamp"][0] == logged["timestamp"][1]


def test_an_append_whose_shared_commit_timed_out_is_not_counted_though_it_was_written_later(tmp_path, monkeypatch):
    import serving.feedback.shared as shared
    from serving.feedback.shared import SharedFeedbackLog, SharedLogConfig

    storage_up, real_put = threading.Event(), shared._put
    storage_up.set()

    def put(fs, path, data):  # shared storage that stalls while storage_up is clear
        assert storage_up.wait(10)
        real_put(fs, path, data)

    monkeypatch.setattr(shared, "_put", put)
    root = str(tmp_path / "feedback")
    wal = SharedFeedbackLog(SharedLogConfig(root=root, commit_timeout_s=0.3, flush_rows=1000, flush_seconds=3600),
                            "ingress-1")
    app = App(tmp_path)
    with served(app, wal) as client:
        body = client.post("/recommend", json={"user_id": "u1", "k": 3}).json()
        storage_up.clear()
        click = {"request_id": body["request_id"], "item_id": body["items"][0]["item_id"], "event": "click"}
        timed_out = client.post("/feedback", json=click)
        assert timed_out.status_code == 503 and "nothing was acknowledged" in timed_out.json()["detail"]
        storage_up.set()  # the stalled group commit goes through after all
    assert read_feedback(root, "events").num_rows == 0  # never acknowledged: not counted
    assert read_feedback(root, "events", acknowledged=False).num_rows == 1  # though written, later
    assert set(read_feedback(root, "impressions")["request_id"].to_pylist()) == {body["request_id"]}


def test_readyz_counts_quarantined_segments(tmp_path):
    aside = tmp_path / "wal" / ".quarantine"
    aside.mkdir(parents=True)
    (aside / "ingress-x-00000000000000000001-0a1b2c3d.jsonl").write_text("{}\n")
    app = App(tmp_path)
    with served(app) as client:
        ready = client.get("/readyz")
    assert ready.status_code == 200  # set aside: it does not block the others, so still ready
    assert ready.json()["feedback_log"]["quarantined_segments"] == 1


def test_a_made_up_user_id_is_held_like_a_session(tmp_path):
    """A user id the catalogue does not know gets live state under ``a:``, in the capped pool of
    made-up keys: more made-up ids push it out; a known user's state stays."""
    state = LocalState(MemoryUserState(UserStateConfig(max_ephemeral_keys=2)))
    app = App(tmp_path, state=state, policy_epsilon=0.0, policy_alpha=0.0, explore_candidates=0, stale_alpha=0.0)
    for user in ("ghost-0", "u1"):
        body = app.recommend(user_id=user, k=3)
        assert body["user_known"] == (user == "u1")
        app.feedback(request_id=body["request_id"], item_id=body["items"][0]["item_id"], event="click")
    assert app.recommend(user_id="ghost-0", k=3)["live_history"] == 1  # used like a user while held
    assert set(state.state.ephemeral) == {"a:ghost-0"} and set(state.state.users) == {"u:u1"}
    for n in (1, 2):
        app.recommend(user_id=f"ghost-{n}", k=3)
    assert app.recommend(user_id="ghost-0", k=3)["live_history"] == 0  # pushed out by two more
    assert app.recommend(user_id="u1", k=3)["live_history"] == 1  # known users are not in that pool


def test_user_state_bounds_are_validated_and_passed_on():
    from pydantic import ValidationError

    from serving.core.service import user_state_config

    cfg = user_state_config(AppArgs(model_dir="m", data_dir="d", state_user_ttl_s=3600, state_max_ephemeral_keys=7,
                                    state_max_answer_ids=20, state_max_shown_bytes=4096, state_compact_every=99))
    assert (cfg.user_ttl_s, cfg.max_ephemeral_keys, cfg.max_answer_ids, cfg.max_shown_bytes, cfg.compact_every) == \
        (3600, 7, 20, 4096, 99)
    for bad in ({"state_user_ttl_s": 0}, {"state_max_ephemeral_keys": 0}, {"state_max_answer_ids": 0},
                {"state_max_shown_bytes": 100}, {"state_compact_every": 0}):
        with pytest.raises(ValidationError):
            AppArgs(model_dir="m", data_dir="d", **bad)


def test_a_duplicate_is_logged_again_so_its_200_acknowledges_a_copy(tmp_path):
    """The first copy of an event may never be acknowledged (its client got a 504 after the state
    recorded it); the retry's "duplicate" 200 must acknowledge a copy of its own."""
    logged = []

    async def append(table, records):
        logged.extend((table, r["request_id"], r["item_id"], r.get("event")) for r in records)

    app = App(tmp_path, append=append)
    body = app.recommend(user_id="u1", k=3)
    click = {"request_id": body["request_id"], "item_id": body["items"][0]["item_id"], "event": "click"}
    assert app.feedback(**click)["status"] == "recorded"
    assert app.feedback(**click)["status"] == "duplicate"
    assert [x for x in logged if x[0] == "events"] == [("events", *click.values())] * 2


def test_the_candidates_follow_the_newest_click(app):
    """``recent_candidates``: the items nearest the newest engaged one join the candidates (ahead
    of the exploration candidates), so the slate can follow a click the history does not lead to."""
    from serving.core.messages import CandidateQuery
    from serving.core.schemas import PolicyInputs

    served = app.backend.holder.served
    served.pipeline.k = 4  # retrieve 4 of the tiny catalogue, so the rest can be followed into
    history = np.asarray(_train().row(1), np.int64)
    far = [j for j in range(N_ITEMS) if j not in set(history.tolist())]
    plain = app.backend.retrieval.compute(served, CandidateQuery(history, None, 0, PolicyInputs()))
    clicked = next(j for j in far if j not in set(plain.items.tolist()))  # outside the retrieved ones
    near = app.run(app.backend.similar(clicked, 4, 0))
    live = PolicyInputs(recent=[clicked], near=4, explore=2)
    cands = app.backend.retrieval.compute(served, CandidateQuery(np.r_[history, clicked], None, 0, live))
    added = cands.items[:cands.explore_from].tolist()
    fresh = [j for j in near if j not in set(plain.items.tolist()) | set(history.tolist())]
    assert fresh and set(fresh) <= set(added), (near, added)  # the click's neighbours are candidates
    assert len(cands.items) - cands.explore_from == 2  # the exploration candidates come after them
    assert clicked not in cands.items.tolist()  # the history is never a candidate


def _ranked(app: App, user: str, k: int = 4):
    """The request path up to the ranked, filtered candidates for ``user`` (and the state it read)."""
    req = RecommendRequest(user_id=user, k=k)
    who = app.service._shopper(req)
    view, _ = app.run(app.service.view(who.key))
    live = app.run(app.service._history(req, who, view))
    return app.run(app.service._ranked(req, who, view, live)), view


def test_only_a_shopper_who_stopped_engaging_loses_the_items_they_ignored(tmp_path):
    """Shown-and-ignored items leave the candidates of a stale shopper only: a steady shopper who
    clicked one item of an answer keeps the rest (excluding them pushed steady shoppers down the
    ranking, benchmarks/closed_loop.py)."""
    app = App(tmp_path, policy_epsilon=0.0, policy_alpha=0.0, explore_candidates=0, recent_candidates=0,
              stale_alpha=0.7, stale_full_alpha=0.7, exclude_shown=3)  # then 4 ignored at p = 1/4: 0.32 < 0.7

    def candidates(user: str) -> tuple[set[str], bool]:
        ranked, _ = _ranked(app, user)
        return {_catalog().item_ids[int(i)] for i in ranked.items}, ranked.stale

    first = app.recommend(user_id="u1", k=4)
    shown = [o["item_id"] for o in first["items"]]
    app.feedback(request_id=first["request_id"], item_id=shown[0], event="click")
    kept, stale = candidates("u1")
    assert not stale and set(shown[1:]) <= kept  # steady: the ignored items stay candidates
    ignored = [o["item_id"] for o in app.recommend(user_id="u1", k=4)["items"]]  # a whole answer ignored
    kept, stale = candidates("u1")
    assert stale and not set(ignored) & kept  # stopped engaging: what they just ignored is left out
    body = app.recommend(user_id="u1", k=4)
    assert body["explore_harder"] and not set(ignored) & {o["item_id"] for o in body["items"]}


def test_how_hard_a_stale_shopper_is_explored_grows_with_the_evidence():
    assert stale_strength(0.5, 0.3, 0.1) == 0  # the run had probability 0.61: not stale
    assert stale_strength(-math.log(0.2), 0.3, 0.1) == pytest.approx(math.log(0.2) / math.log(0.1))
    assert stale_strength(-math.log(0.05), 0.3, 0.1) == 1  # below stale_full_alpha: full
    assert stale_strength(math.inf, 0.3, 0.1) == 1  # engaged before the remembered answers, none since
    assert stale_strength(-math.log(0.2), 0.3, 0.3) == 1  # stale_full_alpha >= stale_alpha: full at once
    assert stale_strength(math.inf, 0.0, 0.1) == 0  # stale_alpha 0: off


def test_a_shopper_who_may_have_stopped_is_explored_part_way_and_keeps_what_they_ignored(tmp_path):
    """One ignored answer at a modest rate is weak evidence (a steady shopper under position bias
    ignores one answer in five): a share of the floor, the ignored items kept; the full treatment
    once the run is unlikely enough (below stale_full_alpha)."""
    app = App(tmp_path, policy_epsilon=0.0, policy_alpha=0.0, explore_candidates=0, recent_candidates=0,
              stale_alpha=0.7, stale_full_alpha=0.05, exclude_shown=3)

    first = app.recommend(user_id="u1", k=4)
    app.feedback(request_id=first["request_id"], item_id=first["items"][0]["item_id"], event="click")
    ignored = [o["item_id"] for o in app.recommend(user_id="u1", k=4)["items"]]  # p = 1/4, 4 ignored: 0.32
    r, view = _ranked(app, "u1")
    assert r.stale and r.strength == pytest.approx(4 * math.log(0.75) / math.log(0.05))
    assert set(ignored) <= {_catalog().item_ids[int(i)] for i in r.items}  # weak evidence: kept
    query = app.service._policy_query(RecommendRequest(user_id="u1", k=4), view, r)
    assert query.epsilon == pytest.approx(r.strength)  # a share of stale_epsilon (1.0)
    for _ in range(2):  # 12 ignored at p = 1/4: 0.032 < 0.05
        app.recommend(user_id="u1", k=4)
    r, _ = _ranked(app, "u1")
    assert r.strength == 1 and not set(ignored) & {_catalog().item_ids[int(i)] for i in r.items}
