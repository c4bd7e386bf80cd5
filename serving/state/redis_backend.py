"""The Redis backend of the real-time user state (:mod:`serving.state.user_state` has the interface,
the embedded backend and what goes into a history): for deployments over several nodes, where
every Ingress replica reads and writes the same Redis.

Every key it writes has a TTL: a request's keys ``request_ttl_s`` from when it was issued; a
key's history and answers ``user_ttl_s`` (known users) or ``session_ttl_s`` (sessions and unknown
user ids) after the ``now`` of its last use. Sessions and unknown user ids are also listed in a
sorted set by last use, which drops the least recently used past ``max_ephemeral_keys``."""

from __future__ import annotations

import json
import math
import os
import time

from serving.state.user_state import (
    Outcome,
    Recorded,
    StateEvent,
    UserStateConfig,
    UserView,
    clip_answer,
)

# ARGV[1..5] of both scripts: prefix, now, user ttl, session ttl, cap of ephemeral keys
_TOUCH = """
local function touch(key)
  local prefix, now = ARGV[1], tonumber(ARGV[2])
  local p = string.sub(key, 1, 2)
  local eph = p == 's:' or p == 'a:'
  local ttl = tonumber(eph and ARGV[4] or ARGV[3])
  local at = math.floor((now + ttl) * 1000)
  redis.call('PEXPIREAT', prefix .. 'h:' .. key, at)
  redis.call('PEXPIREAT', prefix .. 'sh:' .. key, at)
  if eph then
    local z = prefix .. 'ephemeral'
    redis.call('ZADD', z, now, key)
    redis.call('ZREMRANGEBYSCORE', z, '-inf', '(' .. (now - ttl))
    local over = redis.call('ZCARD', z) - tonumber(ARGV[5])
    if over > 0 then
      local old = redis.call('ZPOPMIN', z, over)
      for i = 1, #old, 2 do redis.call('DEL', prefix .. 'h:' .. old[i], prefix .. 'sh:' .. old[i]) end
    end
    redis.call('EXPIRE', z, math.ceil(ttl))
  end
end
"""

# register the answer, remember it (bounded in count and bytes), touch the key
_ISSUE = _TOUCH + """
local key = ARGV[6]
redis.call('SET', KEYS[1], ARGV[7], 'EX', ARGV[8])
local kept = tonumber(ARGV[10])
if kept > 0 then
  local sh = ARGV[1] .. 'sh:' .. key
  redis.call('RPUSH', sh, ARGV[9])
  redis.call('LTRIM', sh, -kept, -1)
  local total = 0
  for _, a in ipairs(redis.call('LRANGE', sh, 0, -1)) do total = total + #a end
  while total > tonumber(ARGV[11]) and redis.call('LLEN', sh) > 1 do total = total - #redis.call('LPOP', sh) end
end
touch(key)
return 1
"""

# check, de-duplicate and append in one atomic step (one round trip)
_RECORD = _TOUCH + """
local req = redis.call('GET', KEYS[1])
if not req then return {'unknown_request', ''} end
local r = cjson.decode(req)
local key = r[1]
local shown = false
for _, it in ipairs(r[2]) do if it == ARGV[6] then shown = true end end
if not shown then return {'not_shown', key} end
if redis.call('SADD', KEYS[2], ARGV[6] .. '|' .. ARGV[7]) == 0 then return {'duplicate', key} end
redis.call('EXPIRE', KEYS[2], ARGV[9])
local h = ARGV[1] .. 'h:' .. key
redis.call('RPUSH', h, ARGV[8])
redis.call('LTRIM', h, -tonumber(ARGV[10]), -1)
touch(key)
return {'recorded', key}
"""


class RedisUserState:
    """The Redis backend (``redis://host:port/db``): ``<prefix>h:<key>`` a list of events,
    ``<prefix>sh:<key>`` a list of answers, ``<prefix>r:<request>`` the request, ``<prefix>d:<request>``
    the set of recorded (item, event) pairs, ``<prefix>ephemeral`` the sessions and unknown user
    ids by last use.

    ``password_env`` names an environment variable that holds the server's password (on Kubernetes,
    set from a Secret), read here, when the client is made, so no password sits in the app's config."""

    def __init__(self, config: UserStateConfig, url: str, prefix: str = "raycart:", timeout_s: float = 0.5,
                 password_env: str | None = None):
        import redis

        self.config, self.prefix = config, prefix
        self.client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                           decode_responses=True, password=password_from_env(password_env))
        self._issue = self.client.register_script(_ISSUE)
        self._record = self.client.register_script(_RECORD)

    def _touch_args(self, now: float) -> list:
        c = self.config
        return [self.prefix, now, c.user_ttl_s, c.session_ttl_s, c.max_ephemeral_keys]

    def view(self, key: str) -> UserView:
        p = self.client.pipeline(transaction=False)
        p.lrange(f"{self.prefix}h:{key}", 0, -1)
        p.lrange(f"{self.prefix}sh:{key}", 0, -1)
        events, shown = p.execute()
        return UserView(tuple(StateEvent(*json.loads(e)) for e in events),
                        tuple(tuple(json.loads(a)) for a in shown))

    def issue(self, request_id: str, key: str, items: list[str], now: float | None = None) -> None:
        now = time.time() if now is None else now
        c = self.config
        self._issue(keys=[f"{self.prefix}r:{request_id}"],
                    args=[*self._touch_args(now), key, json.dumps([key, list(items), now]), math.ceil(c.request_ttl_s),
                          clip_answer(list(items), c), c.answers_kept, c.max_shown_bytes])

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
                                    args=[*self._touch_args(now), item_id, event, json.dumps([item_id, event, now]),
                                          math.ceil(self.config.request_ttl_s), self.config.max_events])
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
