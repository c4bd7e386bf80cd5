"""The Redis backend of the real-time user state (:mod:`serving.user_state` has the interface,
the embedded backend and what goes into a history): for deployments over several nodes, where
every Ingress replica reads and writes the same Redis."""

from __future__ import annotations

import json
import os
import time

from serving.user_state import (
    Outcome,
    Recorded,
    StateEvent,
    UserStateConfig,
    UserView,
    is_session,
)

# check, de-duplicate and append in one atomic step (one round trip)
_RECORD = """
local req = redis.call('GET', KEYS[1])
if not req then return {'unknown_request', ''} end
local r = cjson.decode(req)
local key = r[1]
local shown = false
for _, it in ipairs(r[2]) do if it == ARGV[1] then shown = true end end
if not shown then return {'not_shown', key} end
if redis.call('SADD', KEYS[2], ARGV[1] .. '|' .. ARGV[2]) == 0 then return {'duplicate', key} end
redis.call('EXPIRE', KEYS[2], ARGV[4])
local h = ARGV[5] .. 'h:' .. key
redis.call('RPUSH', h, ARGV[3])
redis.call('LTRIM', h, -tonumber(ARGV[6]), -1)
if string.sub(key, 1, 2) == 's:' then redis.call('EXPIRE', h, ARGV[7]) end
return {'recorded', key}
"""


class RedisUserState:
    """The Redis backend (``redis://host:port/db``): ``<prefix>h:<key>`` a list of events,
    ``<prefix>sh:<key>`` a list of answers, ``<prefix>r:<request>`` the request, ``<prefix>d:<request>``
    the set of recorded (item, event) pairs. Sessions and requests expire by Redis TTLs.

    ``password_env`` names an environment variable that holds the server's password (on Kubernetes,
    set from a Secret), read here, when the client is made, so no password sits in the app's config."""

    def __init__(self, config: UserStateConfig, url: str, prefix: str = "raycart:", timeout_s: float = 0.5,
                 password_env: str | None = None):
        import redis

        self.config, self.prefix = config, prefix
        self.client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                           decode_responses=True, password=password_from_env(password_env))
        self._record = self.client.register_script(_RECORD)

    def _ttl(self, key: str) -> int | None:
        return int(self.config.session_ttl_s) if is_session(key) else None

    def view(self, key: str) -> UserView:
        p = self.client.pipeline(transaction=False)
        p.lrange(f"{self.prefix}h:{key}", 0, -1)
        p.lrange(f"{self.prefix}sh:{key}", 0, -1)
        events, shown = p.execute()
        return UserView(tuple(StateEvent(*json.loads(e)) for e in events),
                        tuple(tuple(json.loads(a)) for a in shown))

    def issue(self, request_id: str, key: str, items: list[str], now: float | None = None) -> None:
        now = time.time() if now is None else now
        p = self.client.pipeline(transaction=True)
        p.set(f"{self.prefix}r:{request_id}", json.dumps([key, list(items), now]), ex=int(self.config.request_ttl_s))
        if self.config.answers_kept:
            p.rpush(f"{self.prefix}sh:{key}", json.dumps(list(items)))
            p.ltrim(f"{self.prefix}sh:{key}", -self.config.answers_kept, -1)
        ttl = self._ttl(key)
        if ttl:
            p.expire(f"{self.prefix}sh:{key}", ttl)
            p.expire(f"{self.prefix}h:{key}", ttl)
        p.execute()

    def check(self, request_id: str, item_id: str, event: str, now: float | None = None) -> Recorded:
        p = self.client.pipeline(transaction=False)
        p.get(f"{self.prefix}r:{request_id}")
        p.sismember(f"{self.prefix}d:{request_id}", f"{item_id}|{event}")
        req, done = p.execute()
        if not req:
            return Recorded(Outcome.UNKNOWN_REQUEST)
        key, items = json.loads(req)[:2]
        if item_id not in items:
            return Recorded(Outcome.NOT_SHOWN, key)
        return Recorded(Outcome.DUPLICATE if done else Outcome.RECORDED, key)

    def record(self, request_id: str, item_id: str, event: str, now: float | None = None) -> Recorded:
        now = time.time() if now is None else now
        outcome, key = self._record(keys=[f"{self.prefix}r:{request_id}", f"{self.prefix}d:{request_id}"],
                                    args=[item_id, event, json.dumps([item_id, event, now]),
                                          int(self.config.request_ttl_s), self.prefix, self.config.max_events,
                                          int(self.config.session_ttl_s)])
        return Recorded(Outcome(outcome), key or None)

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except Exception:  # noqa: BLE001 -- any failure means "not reachable"
            return False

    def close(self) -> None:
        self.client.close()


def password_from_env(name: str | None) -> str | None:
    """The value of the environment variable ``name`` (None when no variable is named); an unset or
    empty variable is an error naming it, not a silent connection without a password."""
    if name is None:
        return None
    value = os.environ.get(name)
    if not value:
        raise ValueError(f"redis_password_env names ${name}, which is {'empty' if value == '' else 'not set'} "
                         "in this process's environment")
    return value
