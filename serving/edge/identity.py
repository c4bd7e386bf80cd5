"""Signed shopper tokens: which shopper a ``/recommend`` or ``/feedback`` call may act for.

An API key says *which client* calls (the shop's backend, its web page); it does not say *for whom*.
With ``shopper_token_secret_file`` set, the shop's backend, which knows who is logged in, signs
that shopper's id with a secret it shares with the app, and the call carries the token in
``X-Shopper-Token``. Without it any shopper key could ask ``/recommend`` for a victim and send
``purchase`` for everything shown: the victim's real-time history, the bandit's reward and the
retraining log would all learn from it.

Token format, version 1 (three dot-separated parts, no padding)::

    v1.<payload>.<signature>
    payload   = base64url(JSON {"sub": "u:<user_id>" | "s:<session_id>", "exp": <unix seconds, integer>})
    signature = base64url(HMAC-SHA256(secret, "v1." + payload))

``secret`` is the secret file's content (UTF-8, surrounding whitespace stripped, at least 32
bytes). The signature is compared in constant time; a token whose ``exp`` has passed is refused.
A shop's backend mints one in any language; in Python (the same as :func:`mint`)::

    python -c "from serving.edge.identity import ShopperTokens as T; print(T.load('secret').mint('u:42', 3600))"

or ``raycart token --secret-file secret --user 42`` (:mod:`serving.commands.serve`).

What the edge enforces (:class:`ShopperGate`): a ``/recommend`` naming ``user_id`` needs a token
for ``u:<user_id>``, one naming only ``session_id`` a token for ``s:<session_id>`` (401 without a
valid one, 403 for a token of someone else). A ``/recommend`` naming neither starts a new anonymous
session: no token is needed, and the answer carries ``session_token``, minted by the app for that
session. ``/feedback`` needs a token, and the service refuses (403) feedback on a request that was
issued for another shopper (:meth:`serving.core.service.RecommendService.feedback`). Plain Python, no Ray.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

TOKEN_HEADER = "x-shopper-token"
VERSION = "v1"
MIN_SECRET_BYTES = 32
MAX_TOKEN_CHARS = 1024  # sub is at most 2 + 200 characters: a real token is far shorter
SUBJECT = re.compile(r"[us]:.{1,200}", re.DOTALL)
B64URL = re.compile(r"[A-Za-z0-9_-]+")  # a token's payload and signature (headers may hold any latin-1)


class TokenSecretError(ValueError):
    """The secret file is missing or too short."""


class IdentityRefused(Exception):
    """401 (no valid token) or 403 (a token for another shopper), with why."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


def subject(user_id: str | None = None, session_id: str | None = None) -> str | None:
    """The identity a request acts for, as the user state keys it: ``u:<user_id>`` (a user id wins),
    ``s:<session_id>``, or None (a new anonymous session)."""
    return f"u:{user_id}" if user_id else f"s:{session_id}" if session_id else None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, repr=False)  # no repr: the secret stays out of logs and tracebacks
class ShopperTokens:
    """Mints and checks v1 tokens with one shared secret.

    Example::

        tokens = ShopperTokens(b"0123456789abcdef0123456789abcdef")
        tokens.verify(tokens.mint("u:42", ttl_s=60))  # "u:42"
    """

    secret: bytes

    def __post_init__(self):
        if len(self.secret) < MIN_SECRET_BYTES:
            raise TokenSecretError(f"a shopper token secret needs at least {MIN_SECRET_BYTES} bytes")

    @classmethod
    def load(cls, path: str) -> ShopperTokens:
        p = Path(path)
        if not p.is_file():
            raise TokenSecretError(f"shopper_token_secret_file: {path} is not a readable file")
        secret = p.read_bytes().strip()
        if len(secret) < MIN_SECRET_BYTES:
            raise TokenSecretError(f"shopper_token_secret_file: {path} holds {len(secret)} bytes; at least "
                                   f"{MIN_SECRET_BYTES} are needed (e.g. head -c 32 /dev/urandom | base64 > {path})")
        return cls(secret)

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self.secret, f"{VERSION}.{payload}".encode("ascii"), hashlib.sha256).digest())

    def mint(self, sub: str, ttl_s: float, now: float | None = None) -> str:
        """A token for ``sub`` (``u:<user_id>`` or ``s:<session_id>``) valid ``ttl_s`` seconds."""
        if not SUBJECT.fullmatch(sub):
            raise ValueError(f"sub must be 'u:<user_id>' or 's:<session_id>' (1-200 characters), not {sub!r}")
        if ttl_s <= 0:
            raise ValueError("ttl_s must be > 0")
        exp = int((time.time() if now is None else now) + ttl_s)
        payload = _b64(json.dumps({"sub": sub, "exp": exp}, separators=(",", ":")).encode())
        return f"{VERSION}.{payload}.{self._sign(payload)}"

    def verify(self, token: str, now: float | None = None) -> str:
        """The token's ``sub``; :class:`IdentityRefused` (401) for a malformed, forged or expired one."""
        parts = token.strip().split(".") if len(token) <= MAX_TOKEN_CHARS else []
        if len(parts) != 3 or parts[0] != VERSION or not all(B64URL.fullmatch(p) for p in parts[1:]):
            raise IdentityRefused(401, f"invalid shopper token: expected '{VERSION}.<payload>.<signature>' "
                                       "(base64url)")
        _, payload, signature = parts
        if not hmac.compare_digest(self._sign(payload), signature):
            raise IdentityRefused(401, "invalid shopper token: bad signature")
        try:
            claims = json.loads(_unb64(payload))
        except ValueError:
            raise IdentityRefused(401, "invalid shopper token: unreadable payload") from None
        sub, exp = (claims.get("sub"), claims.get("exp")) if isinstance(claims, dict) else (None, None)
        if not isinstance(sub, str) or not SUBJECT.fullmatch(sub) or not isinstance(exp, int) or isinstance(exp, bool):
            raise IdentityRefused(401, "invalid shopper token: payload needs a 'sub' (u:/s:) and an integer 'exp'")
        if exp <= (time.time() if now is None else now):
            raise IdentityRefused(401, "shopper token expired; ask the shop for a new one")
        return sub


@dataclass
class ShopperGate:
    """The edge's identity rules; ``tokens`` None (the default): off, anyone may act for anyone.
    Filled in once per process by :func:`serving.edge.http.configure`."""

    tokens: ShopperTokens | None = None
    session_ttl_s: float = 86_400.0  # validity of the tokens minted for new anonymous sessions

    @property
    def on(self) -> bool:
        return self.tokens is not None

    def verified(self, token: str | None) -> str:
        """The subject of a token that must be there (tokens on)."""
        assert self.tokens is not None
        if not token:
            raise IdentityRefused(401, "missing shopper token: send X-Shopper-Token (a token the shop signs "
                                       "for this shopper; README: Shopper identity)")
        return self.tokens.verify(token)

    def for_recommend(self, token: str | None, user_id: str | None, session_id: str | None) -> None:
        """Refuse a ``/recommend`` whose ``user_id``/``session_id`` is not the token's shopper; a
        request naming neither starts a new session and needs no token."""
        wanted = subject(user_id, session_id)
        if not self.on or wanted is None:
            return
        got = self.verified(token)
        if not hmac.compare_digest(got.encode(), wanted.encode()):
            raise IdentityRefused(403, f"this shopper token is not for {'user_id' if user_id else 'session_id'} "
                                       f"{(user_id or session_id)!r}")

    def for_feedback(self, token: str | None) -> str | None:
        """Whom a ``/feedback`` acts for (the service checks the request was issued to them); None: off."""
        return self.verified(token) if self.on else None

    def session_token(self, session_id: str) -> str:
        assert self.tokens is not None
        return self.tokens.mint(f"s:{session_id}", self.session_ttl_s)
