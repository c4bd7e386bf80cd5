"""The HTTP guard (no Ray): API keys and roles (every route of the app's table), keys re-read when
their file changes, nothing keyless unless loopback is trusted, body cap, deadline; and over the
real app: signed shopper tokens, rate limits per key and per shopper, the feedback cap."""

import asyncio
import hashlib
import json
import logging
import os

import pytest
from route_guard import OPEN, check_route_table
from starlette.testclient import TestClient

from serving.edge.identity import ShopperTokens
from serving.edge.security import ApiKeys, Guard, GuardSettings, KeyFileError

SHOP, ADMIN = "shopper-key-0123456789", "admin-key-0123456789ab"


def _keys(tmp_path) -> ApiKeys:
    f = tmp_path / "keys"
    f.write_text(f"# roles\nshopper {SHOP}\nadmin sha256:{hashlib.sha256(ADMIN.encode()).hexdigest()}\n")
    return ApiKeys.load(str(f))


async def _echo(scope, receive, send):
    body = b""
    while True:
        m = await receive()
        body += m.get("body", b"")
        if not m.get("more_body"):
            break
    if scope["path"] == "/slow":
        await asyncio.sleep(5)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": json.dumps({"got": len(body)}).encode()})


def _call(settings, method="POST", path="/recommend", headers=(), chunks=(b"{}",), client=("127.0.0.1", 5000)):
    sent = []
    queue = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

    async def receive():
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    async def send(m):
        sent.append(m)

    scope = {"type": "http", "method": method, "path": path, "client": client,
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers]}
    asyncio.run(Guard(_echo, settings)(scope, receive, send))
    status = sent[0]["status"]
    return status, json.loads(b"".join(m.get("body", b"") for m in sent[1:]) or b"{}")




def test_every_route_of_the_app_but_the_open_ones_needs_a_key(tmp_path, monkeypatch):
    """From the route table, not a list kept by hand: a new route is guarded unless named in OPEN.
    Keys configured, even a trusted loopback client needs one."""
    from serving.edge import http

    for name, value in {"keys": _keys(tmp_path), "trust_loopback": True, "keys_file": None}.items():
        monkeypatch.setattr(http.GUARD, name, value)
    monkeypatch.delattr(http.api.state, "runtime", raising=False)  # no service: a route that runs answers 503/500
    with TestClient(http.api, base_url="http://127.0.0.1", client=("127.0.0.1", 5000),
                    raise_server_exceptions=False) as client:
        seen = check_route_table(client, http.api.routes, SHOP, ADMIN)
    assert OPEN <= seen  # no stale entry in the open list
    assert {"/recommend", "/feedback", "/items", "/items/{item_id}/similar", "/shop/api/info"} <= seen


def test_keys_and_roles(tmp_path):
    g = GuardSettings(keys=_keys(tmp_path))
    assert _call(g)[0] == 401  # no key, even from loopback once keys are configured
    assert _call(g, headers=[("X-API-Key", "wrong-key-0123456789")])[0] == 401
    assert _call(g, headers=[("X-API-Key", SHOP)])[0] == 200
    assert _call(g, headers=[("Authorization", f"Bearer {ADMIN}")])[0] == 200  # admin may shop too
    status, body = _call(g, path="/items", headers=[("X-API-Key", SHOP)])
    assert status == 403 and "admin" in body["detail"]
    assert _call(g, path="/items", headers=[("X-API-Key", ADMIN)])[0] == 200  # the sha256: form works
    assert _call(g, method="GET", path="/healthz", chunks=(b"",))[0] == 200  # probes stay open


def test_without_keys_nothing_that_needs_a_role_is_served_unless_loopback_is_trusted():
    g = GuardSettings()  # trust_loopback off: the default
    for client in (("127.0.0.1", 1), ("::1", 1), ("10.1.2.3", 1)):
        status, body = _call(g, client=client, headers=[("Host", "127.0.0.1:8000")])
        assert status == 401 and "api_keys_file" in body["detail"] and "trust_loopback" in body["detail"]
    assert _call(g, method="GET", path="/healthz", chunks=(b"",))[0] == 200  # probes stay open
    assert _call(g, method="GET", path="/shop", chunks=(b"",))[0] == 200


def test_trusted_loopback_without_keys_serves_loopback_clients_only():
    g = GuardSettings(trust_loopback=True)
    assert _call(g, client=("127.0.0.1", 1))[0] == 200 and _call(g, client=("::1", 1))[0] == 200
    assert _call(g, path="/items", client=("127.0.0.1", 1))[0] == 200  # every role
    status, body = _call(g, client=("10.1.2.3", 1))
    assert status == 401 and "api_keys_file" in body["detail"]


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost:8000", "LOCALHOST", "[::1]:8000", "127.0.0.2:80",
                                  "localhost"])
def test_without_keys_requests_addressed_to_loopback_are_served(host):
    assert _call(GuardSettings(trust_loopback=True), headers=[("Host", host)])[0] == 200


@pytest.mark.parametrize("host", ["attacker.example:8000", "attacker.example", "10.1.2.3:8000", "[2001:db8::1]:80",
                                  "localhost.attacker.example", "127.0.0.1.nip.io:8000", ""])
def test_without_keys_a_page_rebound_to_loopback_is_refused(host):
    """DNS rebinding: a page from attacker.example, its name re-pointed at 127.0.0.1, calls the
    keyless app from the visitor's browser; the Host header still names attacker.example."""
    g = GuardSettings(trust_loopback=True)
    status, body = _call(g, headers=[("Host", host)])
    assert status == 403 and "Host header" in body["detail"]
    assert _call(g, method="GET", path="/shop", headers=[("Host", host)], chunks=(b"",))[0] == 200


def test_with_keys_any_host_name_is_served(tmp_path):
    g = GuardSettings(keys=_keys(tmp_path))
    assert _call(g, headers=[("Host", "shop.example.com"), ("X-API-Key", SHOP)])[0] == 200


def test_bad_key_files_are_refused_with_the_line(tmp_path):
    f = tmp_path / "k"
    for text, needle in [("root hunter2hunter2hunter2", "line 1"), ("shopper short", "16 characters"),
                         ("admin sha256:xyz", "64 hex")]:
        f.write_text(text)
        with pytest.raises(KeyFileError, match=needle):
            ApiKeys.load(str(f))
    for empty in ("", "\n  \n", "# keys go here\n"):  # an empty Secret must not mean "no keys, serve anyway"
        f.write_text(empty)
        with pytest.raises(KeyFileError, match=f"{f} holds no keys"):
            ApiKeys.load(str(f))
        with pytest.raises(KeyFileError, match="holds no keys"):
            GuardSettings().use_keys_file(str(f))
    with pytest.raises(KeyFileError, match="not a readable file"):
        ApiKeys.load(str(tmp_path / "absent"))


def _rewrite(path, text: str) -> None:
    """Replace the file as a Kubernetes Secret update or an editor does (a new inode)."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_the_key_file_is_reread_when_it_changes(tmp_path, caplog):
    f = tmp_path / "keys"
    f.write_text(f"shopper {SHOP}\n")
    g = GuardSettings(trust_loopback=True)
    g.use_keys_file(str(f), reload_s=0.0)
    new = "shopper-key-rotated-0123456789"
    assert _call(g, headers=[("X-API-Key", SHOP)])[0] == 200 and _call(g, headers=[("X-API-Key", new)])[0] == 401
    _rewrite(f, f"shopper {new}\n")  # rotated: the old key removed, a new one added
    assert _call(g, headers=[("X-API-Key", new)])[0] == 200
    assert _call(g, headers=[("X-API-Key", SHOP)])[0] == 401
    with caplog.at_level(logging.WARNING, "serving.edge.security"):
        for bad in ("shopper short\n", "", "admin sha256:xyz\n"):  # invalid, empty: the keys before are kept
            _rewrite(f, bad)
            assert _call(g, headers=[("X-API-Key", new)])[0] == 200
            assert _call(g)[0] == 401  # never keyless
        f.unlink()
        assert _call(g, headers=[("X-API-Key", new)])[0] == 200
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 4 and all(str(f) in w and "keeping the 1 keys" in w for w in warnings)  # once a change
    _rewrite(f, f"shopper {SHOP}\nadmin {ADMIN}\n")
    assert _call(g, path="/items", headers=[("X-API-Key", ADMIN)])[0] == 200


def test_the_key_file_is_looked_at_once_per_reload_s(tmp_path):
    f = tmp_path / "keys"
    f.write_text(f"shopper {SHOP}\n")
    g = GuardSettings()
    g.use_keys_file(str(f), reload_s=3600.0)
    _rewrite(f, f"admin {ADMIN}\n")
    assert _call(g, headers=[("X-API-Key", SHOP)])[0] == 200  # not looked at again yet
    g._checked -= 3600.0  # an hour on
    assert _call(g, headers=[("X-API-Key", SHOP)])[0] == 401
    assert _call(g, path="/items", headers=[("X-API-Key", ADMIN)])[0] == 200


def test_body_cap_declared_and_streamed():
    g = GuardSettings(max_body_bytes=1024, trust_loopback=True)
    status, body = _call(g, headers=[("Content-Length", "5000")], chunks=(b"x" * 5000,))
    assert status == 413 and "1024" in body["detail"]
    status, _ = _call(g, chunks=(b"x" * 600, b"x" * 600))  # chunked, no Content-Length
    assert status == 413
    assert _call(g, chunks=(b"x" * 600, b"x" * 400)) == (200, {"got": 1000})


def test_a_request_past_its_deadline_gets_504():
    status, body = _call(GuardSettings(timeout_s=0.2, trust_loopback=True), path="/slow")
    assert status == 504 and "0.2" in body["detail"]


def test_roles_follow_the_routed_path_under_a_route_prefix(tmp_path):
    g = GuardSettings(keys=_keys(tmp_path))
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"{}"}

    async def send(m):
        sent.append(m)

    for path in ("/shop/items", "/shop//items", "/shop/items/"):  # Serve: root_path is the prefix
        sent.clear()
        scope = {"type": "http", "method": "POST", "path": path, "root_path": "/shop", "client": ("127.0.0.1", 1),
                 "headers": [(b"x-api-key", SHOP.encode())]}
        asyncio.run(Guard(_echo, g)(scope, receive, send))
        assert sent[0]["status"] == 403, path
    sent.clear()
    scope = {"type": "http", "method": "GET", "path": "/shop/healthz", "root_path": "/shop", "client": ("10.0.0.1", 1),
             "headers": []}
    asyncio.run(Guard(_echo, g)(scope, receive, send))
    assert sent[0]["status"] == 200  # the probe stays open under the prefix


# -- shopper identity and rate limits over the real app (serving.edge.identity, serving.core.ratelimit) ---------


TOKEN_SECRET = b"token-secret-token-secret-0123456789"


@pytest.fixture
def live(tmp_path):
    """``make(**app_args)``: (TestClient over serving.edge.http's app configured with them, the test App,
    the metrics it records, the token minter); the edge's settings are put back afterwards."""
    from starlette.testclient import TestClient
    from test_service import App
    from test_serving_metrics import Recorded

    from serving.core.metrics import Metrics
    from serving.edge import http

    (tmp_path / "secret").write_bytes(TOKEN_SECRET)
    edges = []

    def make(**extra):
        app = App(tmp_path, policy_epsilon=0.0, explore_candidates=0, stale_alpha=0.0, trust_loopback=True, **extra)
        sink = Recorded()
        app.service.metrics = Metrics(sink)
        edges.append(http.EdgeLog(app.log))
        api = http.configure(http.Runtime(app.service, edges[-1]), app.args)
        client = TestClient(api, base_url="http://127.0.0.1", client=("127.0.0.1", 5000))
        return client, app, sink, ShopperTokens(TOKEN_SECRET)

    yield make
    for edge in edges:
        edge.stop.set()
    http.GUARD.keys, http.SHOPPERS.tokens, http.LIMITS.buckets = ApiKeys(), None, None


def test_with_tokens_a_shopper_acts_only_for_the_user_its_token_names(live, tmp_path):
    client, _, _, tokens = live(shopper_token_secret_file=str(tmp_path / "secret"))

    def rec(token, user="u1"):
        headers = {"X-Shopper-Token": token} if token is not None else {}
        return client.post("/recommend", json={"user_id": user, "k": 3}, headers=headers)

    assert rec(tokens.mint("u:u1", 60)).status_code == 200
    for token, status, needle in [(None, 401, "missing shopper token"), ("v1.forged.token", 401, "signature"),
                                  (tokens.mint("u:u1", 60, now=0), 401, "expired"),
                                  (ShopperTokens(b"x" * 32).mint("u:u1", 60), 401, "signature"),
                                  (tokens.mint("u:u2", 60), 403, "not for user_id 'u1'")]:
        r = rec(token)
        assert r.status_code == status and needle in r.json()["detail"], (token, r.text)
    assert rec(None).headers["www-authenticate"].startswith("ShopperToken")


def test_with_tokens_a_user_the_catalogue_does_not_know_yet_can_send_feedback(live, tmp_path):
    """A new customer (not in the catalogue; held like a session under ``a:<id>``) acts with a
    token for ``u:<id>``, for /recommend and for /feedback; another user's token is refused."""
    client, _, _, tokens = live(shopper_token_secret_file=str(tmp_path / "secret"))
    mine = {"X-Shopper-Token": tokens.mint("u:new-customer", 60)}
    body = client.post("/recommend", json={"user_id": "new-customer", "k": 3}, headers=mine).json()
    assert body["user_known"] is False
    fb = {"request_id": body["request_id"], "item_id": body["items"][0]["item_id"], "event": "click"}
    other = {"X-Shopper-Token": tokens.mint("u:u1", 60)}
    assert client.post("/feedback", json=fb, headers=other).status_code == 403
    assert client.post("/feedback", json=fb, headers=mine).json()["status"] == "recorded"


def test_with_tokens_an_anonymous_session_is_bound_to_the_token_the_app_mints(live, tmp_path):
    client, _, _, tokens = live(shopper_token_secret_file=str(tmp_path / "secret"))
    first = client.post("/recommend", json={"k": 3}).json()  # a new session: no token needed
    sid = first["session_id"]
    assert tokens.verify(first["session_token"]) == f"s:{sid}"
    own = {"X-Shopper-Token": first["session_token"]}
    assert client.post("/recommend", json={"session_id": sid, "k": 3}).status_code == 401
    assert client.post("/recommend", json={"session_id": sid, "k": 3}, headers=own).status_code == 200
    r = client.post("/recommend", json={"session_id": "someone-else", "k": 3}, headers=own)
    assert r.status_code == 403 and "session_id" in r.json()["detail"]
    fb = {"request_id": first["request_id"], "item_id": first["items"][0]["item_id"], "event": "click"}
    assert client.post("/feedback", json=fb).status_code == 401
    assert client.post("/feedback", json=fb, headers={"X-Shopper-Token": tokens.mint("s:other", 60)}).status_code == 403
    assert client.post("/feedback", json=fb, headers=own).json()["status"] == "recorded"


def test_with_tokens_feedback_on_another_shoppers_request_is_refused(live, tmp_path):
    client, app, _, tokens = live(shopper_token_secret_file=str(tmp_path / "secret"))
    victim, attacker = {"X-Shopper-Token": tokens.mint("u:u1", 60)}, {"X-Shopper-Token": tokens.mint("u:u2", 60)}
    shown = client.post("/recommend", json={"user_id": "u1", "k": 3}, headers=victim).json()
    fb = {"request_id": shown["request_id"], "item_id": shown["items"][0]["item_id"], "event": "purchase"}
    r = client.post("/feedback", json=fb, headers=attacker)
    assert r.status_code == 403 and "another shopper" in r.json()["detail"]
    assert app.service.state.state.view("u:u1").events == ()  # the victim's history learned nothing
    assert client.post("/feedback", json=fb, headers=victim).json()["status"] == "recorded"


def test_without_tokens_anyone_may_act_for_anyone_as_before(live):
    client, _, _, _ = live()
    shown = client.post("/recommend", json={"user_id": "u1", "k": 3}).json()
    assert "session_token" not in client.post("/recommend", json={"k": 3}).json()
    fb = {"request_id": shown["request_id"], "item_id": shown["items"][0]["item_id"], "event": "click"}
    assert client.post("/feedback", json=fb).status_code == 200


def test_a_key_past_its_burst_gets_429_with_retry_after(live, tmp_path):
    client, _, sink, _ = live(api_keys_file=str(_keys_file(tmp_path)), rate_limit_key_per_s=0.01,
                              rate_limit_key_burst=2)
    shop, admin = {"X-API-Key": SHOP}, {"X-API-Key": ADMIN}
    assert [client.get("/items/i0/similar?k=2", headers=shop).status_code for _ in range(2)] == [200, 200]
    r = client.get("/items/i0/similar?k=2", headers=shop)
    assert r.status_code == 429 and 90 <= int(r.headers["retry-after"]) <= 100  # a token each 100 s
    assert "API key" in r.json()["detail"]
    assert client.get("/items/i0/similar?k=2", headers=admin).status_code == 200  # another key, its own bucket
    assert client.get("/healthz").status_code == 200  # open routes are not limited
    assert sink.get("raycart_rate_limited_total", scope="key") == 1
    limits = client.get("/readyz").json()["rate_limits"]  # and the probe says so
    assert limits["per_key"] == "0.01 requests/s, burst 2" and limits["per_shopper"] is None
    assert limits["refused"] == {"key": 1, "shopper": 0, "feedback_cap": 0}


def test_a_shopper_past_its_burst_gets_429_with_retry_after(live):
    client, _, sink, _ = live(rate_limit_user_per_s=0.01, rate_limit_user_burst=2)
    codes = [client.post("/recommend", json={"user_id": "u1", "k": 2}).status_code for _ in range(2)]
    r = client.post("/recommend", json={"user_id": "u1", "k": 2})
    assert codes == [200, 200] and r.status_code == 429 and 90 <= int(r.headers["retry-after"]) <= 100
    assert "shopper" in r.json()["detail"]
    assert client.post("/recommend", json={"user_id": "u2", "k": 2}).status_code == 200
    assert sink.get("raycart_rate_limited_total", scope="user") == 1
    assert client.get("/readyz").json()["rate_limits"]["refused"]["shopper"] == 1


def test_an_answer_collects_at_most_feedback_per_request_events(live):
    client, _, sink, _ = live(feedback_per_request=2)
    shown = client.post("/recommend", json={"user_id": "u1", "k": 4}).json()

    def fb(i, event="click"):
        return client.post("/feedback", json={"request_id": shown["request_id"],
                                              "item_id": shown["items"][i]["item_id"], "event": event})

    assert fb(0).status_code == fb(1).status_code == 200
    assert fb(0).json()["status"] == "duplicate"  # a repeat records nothing, so it is not refused
    r = fb(2, "purchase")
    assert r.status_code == 400 and "feedback_per_request" in r.json()["detail"]
    assert sink.get("raycart_rate_limited_total", scope="feedback_cap") == 1
    limits = client.get("/readyz").json()["rate_limits"]
    assert limits["feedback_per_request"] == 2 and limits["refused"]["feedback_cap"] == 1


def test_limit_settings_are_validated():
    from pydantic import ValidationError

    from serving.core.schemas import AppArgs

    for bad in ({"rate_limit_key_per_s": 1.0}, {"rate_limit_user_burst": 5}, {"feedback_per_request": -1},
                {"session_token_ttl_s": 0}):
        with pytest.raises(ValidationError):
            AppArgs(model_dir="m", data_dir="d", **bad)


def _keys_file(tmp_path):
    f = tmp_path / "keys"
    f.write_text(f"shopper {SHOP}\nadmin {ADMIN}\n")
    return f


def test_a_key_file_that_cannot_be_decoded_is_a_key_file_error(tmp_path):
    """Read at start and on every reload: an unreadable file is a clear KeyFileError (the reload
    keeps the old keys), never an exception that turns a request into a 500."""
    bad = tmp_path / "keys"
    bad.write_bytes(b"shopper \xff\xfe-not-utf8-0123456789\n")
    with pytest.raises(KeyFileError, match="cannot be read"):
        ApiKeys.load(str(bad))
