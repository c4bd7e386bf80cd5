"""Every route of an app's table asked without a key, with a wrong one, a shopper's and an
admin's: shared by the app's and the browse-only shop's guard tests (tests/unit is on pytest's
``pythonpath``, so either test file runs alone)."""

from __future__ import annotations

import re

from starlette.testclient import TestClient

# the routes served without a key: probes, the API schema and its pages, the shop page, its assets
# and product pictures. Every other route of an app's table must need a key.
OPEN = {"/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/shop",
        "/shop/static/{name}", "/shop/images/{item_id}"}
ADMIN_ONLY = {("POST", "/items")}


def route_table(routes) -> list[tuple[str, str]]:
    """(method, path template) of every HTTP route, those of included routers too (FastAPI >= 0.165
    keeps an included router as one entry; its ``effective_route_contexts`` hold the full paths)."""
    out = []
    for route in routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if contexts is not None:
            out += route_table(list(contexts()))
        elif getattr(route, "methods", None):
            out += [(m, route.path) for m in sorted(route.methods) if m != "HEAD"]
        else:  # a Mount, a websocket: teach this test what guards it
            raise AssertionError(f"a route of a kind this test does not know: {route!r}")
    return out


def check_route_table(client: TestClient, routes, shopper: str, admin: str | None) -> set[str]:
    """Ask every (method, route) of ``routes`` through ``client`` (an app whose guard has keys)
    without a key, with ``shopper``'s and with ``admin``'s; the routes seen, by path template."""
    seen = set()
    for method, template in route_table(routes):
        seen.add(template)
        path = re.sub(r"\{[^}]+\}", "x", template)

        def ask(key, method=method, path=path):
            headers = {"X-API-Key": key} if key else {}
            return client.request(method, path, headers=headers, json={} if method == "POST" else None).status_code

        where = f"{method} {template}"
        if template in OPEN:
            assert ask(None) not in (401, 403), where
            continue
        assert ask(None) == 401, f"{where} is served without a key"
        assert ask("wrong-key-0123456789") == 401, where
        as_shopper = ask(shopper)  # the key is taken (a route may still refuse on its own, with 403)
        assert as_shopper == 403 if (method, template) in ADMIN_ONLY else as_shopper != 401, where
        if admin is not None:
            as_admin = ask(admin)
            assert as_admin != 401 and (as_admin != 403 or (method, template) not in ADMIN_ONLY), where
    return seen
