"""Signed shopper tokens (``serving.edge.identity``): the v1 format, forgery, expiry, the secret file,
the edge's rules for /recommend and /feedback, and ``raycart token``."""

import base64
import hashlib
import hmac
import json

import pytest

from serving.edge.identity import IdentityRefused, ShopperGate, ShopperTokens, TokenSecretError
from training.common.errors import DataError

SECRET = b"s3cret-s3cret-s3cret-s3cret-0123456789"
NOW = 1_700_000_000.0


def test_a_token_is_the_documented_v1_format():
    token = ShopperTokens(SECRET).mint("u:42", ttl_s=60, now=NOW)
    version, payload, signature = token.split(".")
    assert version == "v1" and "=" not in token
    assert json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))) == {"sub": "u:42",
                                                                                         "exp": int(NOW) + 60}
    mac = hmac.new(SECRET, f"v1.{payload}".encode(), hashlib.sha256).digest()  # what a shop's backend computes
    assert signature == base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    assert ShopperTokens(SECRET).verify(token, now=NOW + 59) == "u:42"


def _refused(token: str, now: float = NOW) -> str:
    with pytest.raises(IdentityRefused) as e:
        ShopperTokens(SECRET).verify(token, now=now)
    assert e.value.status == 401
    return e.value.detail


def test_forged_tampered_and_expired_tokens_are_refused():
    tokens = ShopperTokens(SECRET)
    good = tokens.mint("u:42", ttl_s=60, now=NOW)
    assert "signature" in _refused(ShopperTokens(b"another-secret-another-secret-0123").mint("u:42", 60, now=NOW))
    _, payload, signature = good.split(".")
    other = base64.urlsafe_b64encode(json.dumps({"sub": "u:7", "exp": int(NOW) + 60}).encode()).rstrip(b"=").decode()
    assert "signature" in _refused(f"v1.{other}.{signature}")  # someone else's id under a real signature
    assert "expired" in _refused(good, now=NOW + 60)
    for junk in ("", "v1.abc", f"v2.{payload}.{signature}", "x" * 5000, f"v1.{payload}.{signature}.x"):
        assert "invalid" in _refused(junk)
    unsigned = base64.urlsafe_b64encode(b'{"sub": "u:1"}').rstrip(b"=").decode()  # signed, but no exp
    assert "exp" in _refused(f"v1.{unsigned}.{tokens._sign(unsigned)}")


def test_the_secret_comes_from_a_file_of_at_least_32_bytes(tmp_path):
    f = tmp_path / "secret"
    f.write_bytes(SECRET + b"\n")
    assert ShopperTokens.load(str(f)).secret == SECRET
    f.write_text("short\n")
    with pytest.raises(TokenSecretError, match="at least 32"):
        ShopperTokens.load(str(f))
    with pytest.raises(TokenSecretError, match="not a readable file"):
        ShopperTokens.load(str(tmp_path / "absent"))
    assert "s3cret" not in repr(ShopperTokens(SECRET))  # kept out of logs and tracebacks


def test_the_gate_binds_recommend_and_feedback_to_the_token():
    gate = ShopperGate(ShopperTokens(SECRET))
    user, session = gate.tokens.mint("u:42", 60), gate.session_token("abc")
    gate.for_recommend(user, "42", None)
    gate.for_recommend(session, None, "abc")
    gate.for_recommend(None, None, None)  # a new anonymous session needs no token
    for token, user_id, session_id, status in [(None, "42", None, 401), (user, "43", None, 403),
                                               (session, None, "abd", 403), (session, "abc", None, 403),
                                               (user, None, "42", 403)]:
        with pytest.raises(IdentityRefused) as e:
            gate.for_recommend(token, user_id, session_id)
        assert e.value.status == status, (token, user_id, session_id)
    assert gate.for_feedback(session) == "s:abc"
    with pytest.raises(IdentityRefused):
        gate.for_feedback(None)
    off = ShopperGate()
    off.for_recommend(None, "42", None)
    assert off.for_feedback(None) is None


def test_raycart_token_mints_what_the_app_verifies(tmp_path, capsys):
    import argparse

    from serving.commands.serve import register_token

    f = tmp_path / "secret"
    f.write_bytes(SECRET)
    parser = argparse.ArgumentParser()
    register_token(parser.add_subparsers())
    args = parser.parse_args(["token", "--secret-file", str(f), "--session", "abc", "--ttl-s", "30"])
    assert args.func(args) == 0
    assert ShopperTokens(SECRET).verify(capsys.readouterr().out.strip()) == "s:abc"
    args = parser.parse_args(["token", "--secret-file", str(tmp_path / "absent"), "--user", "1"])
    with pytest.raises(DataError, match="--secret-file"):
        args.func(args)


@pytest.mark.parametrize("token", ["v1.\xe9.x", "v1.e30.\xe9\xe9", "v1..", "v1.a b.c", "v1.e30.sig\x00"])
def test_a_token_with_characters_outside_base64url_is_a_401_not_a_crash(token):
    """Headers arrive as latin-1: a token with other characters is refused like any bad token."""
    with pytest.raises(IdentityRefused) as err:
        ShopperTokens(SECRET).verify(token, now=NOW)
    assert err.value.status == 401
