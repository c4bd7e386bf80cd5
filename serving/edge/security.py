"""The HTTP edge's guard: API keys with two roles, a body-size cap and a per-request deadline.

Plain ASGI (no Ray), wrapped around the FastAPI app by :mod:`serving.deploy.app`.

- **Keys** (:class:`ApiKeys`): a file of ``<role> <key>`` lines (``shopper`` may call
  ``/recommend``, ``/feedback`` and ``GET /items/{id}/similar``; ``admin`` may also ``POST /items``),
  sent as ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``. A line's key may be given as
  ``sha256:<hex>`` so the file holds no usable secret; a file without any key is refused (an
  empty Secret must not turn into a keyless app). The file is re-read when it changes (checked
  at most every ``reload_s``; an invalid new version is logged and the keys before it kept), so
  keys rotate without a redeploy.
- **Without keys** a route that needs a role is refused (401) unless loopback is trusted
  explicitly (``trust_loopback``: the local demo, ``raycart shop``, tests). Then only clients on
  loopback are served, and only requests addressed to a loopback name (``Host`` of
  ``localhost``, ``127.0.0.1``, ``[::1]``): a web page whose own domain has been re-pointed at
  127.0.0.1 (DNS rebinding) would otherwise read and write the keyless app from the visitor's
  browser.
- **Body cap**: a declared ``Content-Length`` over the cap is refused at once (413), a chunked body
  is counted while it is read and refused when it passes the cap -- nothing larger is buffered.
- **Deadline**: a request not answered within ``timeout_s`` gets 504 (and its work is cancelled).
- ``/healthz``, ``/readyz`` and the OpenAPI schema are open (probes, clients' code generators).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

ROLES = ("shopper", "admin")
OPEN_PATHS = {"/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
# the shop page page, its assets and product pictures (its /shop/api helpers need a shopper key)
OPEN_PREFIXES = ("/shop/static/", "/shop/images/")
NO_KEYS = ("this app has no API keys configured: set api_keys_file (lines '<shopper|admin> <key>'; raycart serve "
           "--api-keys-file FILE), or trust_loopback: true (raycart serve --trust-loopback) to serve clients on "
           "this machine without keys (README: Security and durability)")

log = logging.getLogger(__name__)


class KeyFileError(ValueError):
    pass


@dataclass(frozen=True)
class ApiKeys:
    """SHA-256 digests of the configured keys, per role."""

    digests: dict[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | None) -> ApiKeys:
        if not path:
            return cls()
        p = Path(path)
        if not p.is_file():
            raise KeyFileError(f"api_keys_file: {path} is not a readable file")
        out: dict[str, set[str]] = {r: set() for r in ROLES}
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:  # a reload must see a clear error, never a 500
            raise KeyFileError(f"api_keys_file: {path} cannot be read ({type(exc).__name__})") from None
        for n, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 2 or parts[0] not in ROLES:
                raise KeyFileError(f"api_keys_file: {path} line {n}: expected '<shopper|admin> <key>'")
            role, key = parts
            if key.startswith("sha256:"):
                digest = key[7:].lower()
                if not re.fullmatch(r"[0-9a-f]{64}", digest):
                    raise KeyFileError(f"api_keys_file: {path} line {n}: sha256: needs 64 hex digits")
            elif len(key) < 16:
                raise KeyFileError(f"api_keys_file: {path} line {n}: a key needs at least 16 characters")
            else:
                digest = _digest(key)
            out[role].add(digest)
        if not any(out.values()):
            raise KeyFileError(f"api_keys_file: {path} holds no keys (expected '<shopper|admin> <key>' lines); "
                               "refusing to serve without keys")
        return cls({r: frozenset(v) for r, v in out.items() if v})

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.digests.values())

    @property
    def configured(self) -> bool:
        return any(self.digests.values())

    def role_of(self, key: str | None) -> str | None:
        """``admin``, ``shopper`` or None; constant-time in the key."""
        if not key:
            return None
        d = _digest(key)
        found = None
        for role in ROLES:  # every digest compared, whichever matches
            for known in self.digests.get(role, ()):
                if hmac.compare_digest(d, known):
                    found = role
        return found


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def presented_key(headers: dict[bytes, bytes]) -> str:
    """The API key a request carries (``X-API-Key`` or ``Authorization: Bearer``); "" for none."""
    key = headers.get(b"x-api-key", b"").decode("latin-1").strip()
    if not key:
        auth = headers.get(b"authorization", b"").decode("latin-1")
        if auth[:7].lower() == "bearer ":
            key = auth[7:].strip()
    return key


def required_role(method: str, path: str) -> str | None:
    """The role a route needs; None for the open ones."""
    if path in OPEN_PATHS or path == "/shop" or path.startswith(OPEN_PREFIXES):
        return None
    if method == "POST" and path.rstrip("/") == "/items":
        return "admin"
    return "shopper"


def route_path(scope) -> str:
    """The path the app routes on: Serve passes the full path with ``root_path`` = the route
    prefix, and Starlette strips it before routing -- so must the role check."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):] or "/"
    return "/" + path.lstrip("/")


def addressed_to_loopback(host: bytes | None) -> bool:
    """Whether a request's ``Host`` header names this machine's loopback (any port); no header
    (HTTP/1.0) passes, since browsers always send one."""
    if host is None:
        return True
    name = host.decode("latin-1").strip().lower()
    if name.startswith("["):  # [::1]:8000
        name = name[1:name.find("]")] if "]" in name else name
    elif name.count(":") == 1:
        name = name.split(":")[0]
    return name == "localhost" or is_loopback((name, 0))


def is_loopback(client) -> bool:
    host = client[0] if client else None
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _stamp(path: str) -> tuple[int, int, int] | None:
    """What tells a changed file: (inode, size, mtime in ns); None when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


@dataclass
class GuardSettings:
    """Filled by the Ingress from its arguments (the middleware is created before it is).

    ``keys_file`` (set through :meth:`use_keys_file`) is re-read when its inode, size or mtime
    change, looked at (one ``stat``) at most every ``reload_s`` seconds."""

    keys: ApiKeys = field(default_factory=ApiKeys)
    max_body_bytes: int = 64 * 1024
    timeout_s: float = 10.0
    trust_loopback: bool = False  # without keys: serve loopback clients (else 401)
    keys_file: str | None = None
    reload_s: float = 5.0
    _seen: tuple[int, int, int] | None = field(default=None, repr=False)  # the file as last read
    _checked: float = field(default=0.0, repr=False)  # time.monotonic() of the last look

    def use_keys_file(self, path: str | None, reload_s: float = 5.0) -> None:
        """Serve the keys of ``path`` (None: no keys), re-read when it changes; a
        :class:`KeyFileError` for a bad or empty file."""
        stamp = _stamp(path) if path else None  # before reading: a change after it is seen next time
        self.keys = ApiKeys.load(path)
        self.keys_file, self.reload_s, self._seen, self._checked = path, reload_s, stamp, time.monotonic()

    def current_keys(self) -> ApiKeys:
        """The keys now, the file re-read first if it is time to look and it changed."""
        if self.keys_file is not None and time.monotonic() - self._checked >= self.reload_s:
            self._checked = time.monotonic()
            stamp = _stamp(self.keys_file)
            if stamp != self._seen:
                self._seen = stamp
                self._reload()
        return self.keys

    def _reload(self) -> None:
        try:
            keys = ApiKeys.load(self.keys_file)
        except KeyFileError as exc:  # logged once per change of the file
            log.warning("%s; keeping the %d keys loaded before", exc, self.keys.count)
            return
        self.keys = keys
        log.info("api_keys_file %s re-read: %d keys", self.keys_file, keys.count)


async def _reply(send, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware; ``settings`` is shared with the Ingress that configures it."""

    def __init__(self, app, settings: GuardSettings):
        self.app, self.settings = app, settings

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        settings = self.settings
        headers = dict(scope.get("headers") or [])
        role = required_role(scope.get("method", "GET"), route_path(scope))
        if role is not None:
            problem = self._authorise(scope.get("client"), headers, role)
            if problem is not None:
                status, detail = problem
                return await _reply(send, status, detail,
                                    [(b"www-authenticate", b'Bearer realm="raycart"')] if status == 401 else None)
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                return await _reply(send, 400, "Content-Length is not a number")
            if size > settings.max_body_bytes:
                return await _reply(send, 413, f"request body of {size} bytes is over the {settings.max_body_bytes}-byte limit")
        seen = 0
        started = refused = False

        async def counted_receive():
            nonlocal seen, refused, started
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > settings.max_body_bytes and not refused:
                    # answered here (the app would turn an exception into a 400), and the app
                    # sees the client gone: whatever it answers next is dropped
                    refused = True
                    if not started:
                        started = True
                        await _reply(send, 413, f"request body is over the {settings.max_body_bytes}-byte limit")
                    return {"type": "http.disconnect"}
            return message

        async def tracked_send(message):
            nonlocal started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await asyncio.wait_for(self.app(scope, counted_receive, tracked_send), settings.timeout_s)
        except TimeoutError:
            if not started:
                await _reply(send, 504, f"not answered within {settings.timeout_s:g} s; retry later")
        except Exception:
            if not refused:  # after a 413 the app's complaint about the cut body is moot
                raise

    def _authorise(self, client, headers: dict[bytes, bytes], role: str) -> tuple[int, str] | None:
        keys = self.settings.current_keys()
        if not keys.configured:
            if not self.settings.trust_loopback:
                return 401, NO_KEYS
            if not is_loopback(client):
                return 401, ("this app has no API keys configured and serves loopback clients only "
                             "(trust_loopback); set api_keys_file (README: Security and durability)")
            if not addressed_to_loopback(headers.get(b"host")):
                return 403, ("this app has no API keys configured and answers requests addressed to "
                             "localhost/127.0.0.1 only (Host header); set api_keys_file to serve other names")
            return None
        key = presented_key(headers)
        if not key:
            return 401, "missing API key: send X-API-Key or Authorization: Bearer"
        got = keys.role_of(key)
        if got is None:
            return 401, "invalid API key"
        if role == "admin" and got != "admin":
            return 403, "this API key's role (shopper) may not call this endpoint; it needs an admin key"
        return None
