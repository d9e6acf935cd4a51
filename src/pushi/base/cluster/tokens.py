"""The session tokens of a cluster, in Redis: the shared twin of
``access.MemoryTokens`` (the same methods, blocking, for the REST
threads), so that a token issued by any node holds on every node, and a
logout on any node ends it everywhere.

Keys: ``pushi:token:<id>`` (``id``: the token's SHA-256, never the token)
holds ``[app_id, expires, key]`` as JSON and lives as long as the token
(its TTL); ``pushi:tokens:<app_id>``, a sorted set of the app's token ids
scored by their expiry (microseconds by Redis's clock), bounds an app's
tokens and ends them all when the app is disabled or a key revoked.  Each
change is one script, so two nodes' logins never leave an app over its
bound.

A call fails with ``access.TokensUnavailable`` when Redis does not answer
within the client's socket timeout.
"""

import json

from .. import access
from ..access import TokensUnavailable

READ_TIMEOUT = 1.0
""" Seconds a blocking call waits for Redis (connecting included) """

TOKEN = "pushi:token:"
APP_TOKENS = "pushi:tokens:"

# the scripts name the token keys they derive from an id themselves: one
# Redis instance (plus replicas), not Redis Cluster
ADD = """
local now = redis.call('TIME')
local us = now[1] * 1000000 + now[2]
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', us)
local ended = {}
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4]) + 1
if over > 0 then
  local oldest = redis.call('ZPOPMIN', KEYS[2], over)
  for i = 1, #oldest, 2 do
    redis.call('DEL', ARGV[5] .. oldest[i])
    ended[#ended + 1] = oldest[i]
  end
end
-- scores strictly increase, so that the oldest go first even when two
-- logins share a microsecond
local expires = us + ttl * 1000
local top = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
if top[2] and tonumber(top[2]) >= expires then
  expires = tonumber(top[2]) + 1
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ttl)
redis.call('ZADD', KEYS[2], expires, ARGV[1])
redis.call('PEXPIRE', KEYS[2], ttl)
return ended
"""
""" KEYS: the token's key, the app's set; ARGV: id, entry (JSON), lifetime
(ms), the bound, the token key prefix.  Returns the ids it ended. """

REMOVE = """
local value = redis.call('GET', KEYS[1])
if value then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', ARGV[2] .. cjson.decode(value)[1], ARGV[1])
end
return value
"""
""" KEYS: the token's key; ARGV: id, the app set prefix.  Returns the
entry it ended, or nil. """

REVOKE = """
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
for _, id in ipairs(ids) do
  redis.call('DEL', ARGV[1] .. id)
end
redis.call('DEL', KEYS[1])
return ids
"""
""" KEYS: the app's set; ARGV: the token key prefix.  Returns the ids. """

REVOKE_KEYS = """
local live = {}
for i = 2, #ARGV do
  live[ARGV[i]] = true
end
local ended = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local value = redis.call('GET', ARGV[1] .. id)
  if not value then
    redis.call('ZREM', KEYS[1], id)
  else
    local key = cjson.decode(value)[3]
    if key ~= cjson.null and not live[key] then
      redis.call('DEL', ARGV[1] .. id)
      redis.call('ZREM', KEYS[1], id)
      ended[#ended + 1] = id
    end
  end
end
return ended
"""
""" KEYS: the app's set; ARGV: the token key prefix, then the app's live
keys.  Returns the ids it ended (tokens of a key no longer live). """


def blocking_client(url, timeout=READ_TIMEOUT):
    """A redis-py client for the REST threads: each call waits ``timeout``
    at most, retried once on a fresh connection only when the pooled one
    turns out to be gone (Redis restarted)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
    )


class RedisTokens:
    """Session tokens in Redis, through ``client`` (a redis-py client,
    ``blocking_client``); at most ``max_tokens`` per app (by default
    ``access.MAX_TOKENS``)."""

    def __init__(self, client, max_tokens=None):
        self.client = client
        self.max_tokens = max_tokens
        self._add = client.register_script(ADD)
        self._remove = client.register_script(REMOVE)
        self._revoke = client.register_script(REVOKE)
        self._revoke_keys = client.register_script(REVOKE_KEYS)

    def add(self, ident, entry, lifetime):
        """Keeps a new token for ``lifetime`` seconds; returns the ids of
        the app's oldest tokens it ended to stay within the bound."""
        value = json.dumps(list(entry), separators=(",", ":"))
        limit = self.max_tokens or access.MAX_TOKENS
        keys = [TOKEN + ident, APP_TOKENS + entry[0]]
        args = [ident, value, int(lifetime * 1000), limit, TOKEN]
        return _ids(self._call(lambda: self._add(keys, args)))

    def get(self, ident):
        return _entry(self._call(lambda: self.client.get(TOKEN + ident)))

    def remove(self, ident):
        keys, args = [TOKEN + ident], [ident, APP_TOKENS]
        return _entry(self._call(lambda: self._remove(keys, args)))

    def revoke(self, app_id):
        keys, args = [APP_TOKENS + app_id], [TOKEN]
        return _ids(self._call(lambda: self._revoke(keys, args)))

    def revoke_keys(self, app_id, live):
        keys, args = [APP_TOKENS + app_id], [TOKEN] + sorted(live)
        return _ids(self._call(lambda: self._revoke_keys(keys, args)))

    def exist(self, ids):
        """Whether each of ``ids`` is still held, in their order."""
        pipeline = self.client.pipeline(transaction=False)
        for ident in ids:
            pipeline.exists(TOKEN + ident)
        return [bool(held) for held in self._call(pipeline.execute)]

    @staticmethod
    def _call(work):
        import redis

        try:
            return work()
        except redis.RedisError as error:
            raise TokensUnavailable("Redis: %s" % error) from None


def _entry(value):
    if value is None:
        return None
    app_id, expires, key = json.loads(value)
    return app_id, expires, key


def _ids(values):
    return [value.decode() if isinstance(value, bytes) else value for value in values]
