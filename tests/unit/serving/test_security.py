"""The HTTP guard (no Ray): API keys and roles, loopback-only without keys, body cap, deadline."""

import asyncio
import hashlib
import json

import pytest

from serving.security import ApiKeys, Guard, GuardSettings, KeyFileError, required_role

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


def test_routes_need_their_role():
    assert required_role("POST", "/recommend") == required_role("POST", "/feedback") == "shopper"
    assert required_role("GET", "/items/x/similar") == "shopper"
    assert required_role("POST", "/items") == "admin"
    assert required_role("GET", "/healthz") is required_role("GET", "/readyz") is None


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


def test_without_keys_only_loopback_clients_are_served():
    g = GuardSettings()
    assert _call(g, client=("127.0.0.1", 1))[0] == 200 and _call(g, client=("::1", 1))[0] == 200
    status, body = _call(g, client=("10.1.2.3", 1))
    assert status == 401 and "api_keys_file" in body["detail"]


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost:8000", "LOCALHOST", "[::1]:8000", "127.0.0.2:80",
                                  "localhost"])
def test_without_keys_requests_addressed_to_loopback_are_served(host):
    assert _call(GuardSettings(), headers=[("Host", host)])[0] == 200


@pytest.mark.parametrize("host", ["attacker.example:8000", "attacker.example", "10.1.2.3:8000", "[2001:db8::1]:80",
                                  "localhost.attacker.example", "127.0.0.1.nip.io:8000", ""])
def test_without_keys_a_page_rebound_to_loopback_is_refused(host):
    """DNS rebinding: a page from attacker.example, its name re-pointed at 127.0.0.1, calls the
    keyless app from the visitor's browser; the Host header still names attacker.example."""
    status, body = _call(GuardSettings(), headers=[("Host", host)])
    assert status == 403 and "Host header" in body["detail"]
    assert _call(GuardSettings(), method="GET", path="/shop", headers=[("Host", host)], chunks=(b"",))[0] == 200


def test_with_keys_any_host_name_is_served(tmp_path):
    g = GuardSettings(keys=_keys(tmp_path))
    assert _call(g, headers=[("Host", "shop.example.com"), ("X-API-Key", SHOP)])[0] == 200


def test_bad_key_files_are_refused_with_the_line(tmp_path):
    for text, needle in [("root hunter2hunter2hunter2", "line 1"), ("shopper short", "16 characters"),
                         ("admin sha256:xyz", "64 hex")]:
        f = tmp_path / "k"
        f.write_text(text)
        with pytest.raises(KeyFileError, match=needle):
            ApiKeys.load(str(f))
    with pytest.raises(KeyFileError, match="not a readable file"):
        ApiKeys.load(str(tmp_path / "absent"))


def test_body_cap_declared_and_streamed():
    g = GuardSettings(max_body_bytes=1024)
    status, body = _call(g, headers=[("Content-Length", "5000")], chunks=(b"x" * 5000,))
    assert status == 413 and "1024" in body["detail"]
    status, _ = _call(g, chunks=(b"x" * 600, b"x" * 600))  # chunked, no Content-Length
    assert status == 413
    assert _call(g, chunks=(b"x" * 600, b"x" * 400)) == (200, {"got": 1000})


def test_a_request_past_its_deadline_gets_504():
    status, body = _call(GuardSettings(timeout_s=0.2), path="/slow")
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
