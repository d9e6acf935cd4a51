"""The Lua scripts that keep a cluster's shared state in Redis: channel
occupancy, app connections, presence members and signed-in users.

Redis runs each script atomically, so a transition (a channel's first
subscriber, a user's first socket on a presence channel, ...) is returned
to exactly one caller, and a decision (a full presence channel) is taken
on the same state it reports.

Every count is kept per node too (``node`` below is the node id), and
every entry a node creates is recorded in ``pushi:node:<node>:owned`` (a
SET of JSON arrays: ``["sub", app, channel]``, ``["conn", app]``,
``["pres", app, channel, user]``, ``["user", app, user]``) while the
node's count for it is above 0: the reaper undoes a dead node's entries
with the leave scripts called with ``all`` ("1": the node's whole count
at once).  A leave for an entry the node does not hold (already reaped,
or Redis restarted empty) changes nothing, which makes the reaper and a
late leave safe to run twice.

A node sends the changes of a loop turn (each a ``Step``) in one call of
``STEPS``, which runs them in order, each as its own script would run.

The ``*_SET`` scripts set the node's count of entries to what the node
has (re-registration after Redis restarted empty or after the node was
reaped): running one again changes nothing.

The presence scripts may also publish the member event they decide (see
``ANNOUNCE``), so that a join's member list and the channel's member
events are cut at one point of the channel's order.

The leaves given a ``pending`` entry (``cluster/linger``: an app whose
webhooks linger) add it to ``pushi:lingering`` with its deadline when they
vacate the channel or remove the member, and the joins given one remove
it when they occupy the channel or add the member again, answering that
they undid it: neither webhook is posted.

Redis must keep every key (``maxmemory-policy noeviction``, the default):
an evicted count would make transitions that never happened.

Keys (``{a}`` is the app id as a Redis Cluster hash tag, ``<c>`` a
channel): ``pushi:{a}:ch:<c>:nodes`` HASH node -> sockets;
``pushi:{a}:counts`` HASH channel -> sockets; ``pushi:{a}:channels`` ZSET
(score 0) of the occupied channels; ``pushi:{a}:conns`` HASH node ->
sockets and ``pushi:{a}:connections`` the app's total;
``pushi:{a}:ch:<c>:members`` HASH user -> member (JSON ``[user_info,
peer]``); ``pushi:{a}:ch:<c>:mcount`` HASH user -> sockets;
``pushi:{a}:ch:<c>:mnode`` HASH "node|user" -> sockets;
``pushi:{a}:ucounts`` HASH channel -> members; ``pushi:{a}:users`` HASH
user -> signed-in sockets; ``pushi:{a}:unode`` HASH "node|user" ->
signed-in sockets; ``pushi:lingering`` ZSET pending entry (JSON ``[app,
channel]`` for ``channel_vacated``, ``[app, channel, user]`` for
``member_removed``) -> its deadline (ms, by Redis's clock).
"""

from pushi.net.redis import Script


class Step(Script):
    """A script (``prefix``, the helpers it uses, then ``body``) that can
    also run as one step of ``STEPS``."""

    def __init__(self, prefix, body):
        Script.__init__(self, prefix + body)
        self.body = body
        self.index = 0
        """ Its place in ``STEPS`` (set there) """


# The lingering webhooks: ``linger(key, pending, ms)`` adds a pending
# entry due in ``ms`` and returns its deadline, ``undo(key, pending)``
# removes one (1 when there was one); "" for ``pending``: no linger.
LINGER = """
local function now_ms()
  local now = redis.call('TIME')
  return tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
end

local function linger(key, pending, ms)
  local due = now_ms() + tonumber(ms)
  redis.call('ZADD', key, string.format('%.0f', due), pending)
  return due
end

local function undo(key, pending)
  if not pending or pending == '' then
    return 0
  end
  return redis.call('ZREM', key, pending)
end
"""

# KEYS: nodes, counts, channels, owned, lingering; ARGV: node, app,
# channel[, pending]
# -> {count, 1 when this join occupied the channel[, 1 when that undid
#    the channel's lingering vacated]}
OCCUPANCY_JOIN = Step(
    LINGER,
    """
if redis.call('HINCRBY', KEYS[1], ARGV[1], 1) == 1 then
  redis.call('SADD', KEYS[4], cjson.encode({'sub', ARGV[2], ARGV[3]}))
end
local total = redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
if total == 1 then
  redis.call('ZADD', KEYS[3], 0, ARGV[3])
  return {1, 1, undo(KEYS[5], ARGV[4])}
end
return {total, 0}
""",
)

# KEYS: nodes, counts, channels, owned, lingering; ARGV: node, app,
# channel, all[, pending, linger ms]
# -> {count, 1 when this leave vacated the channel[, the deadline of its
#    lingering vacated, with a pending entry]}
OCCUPANCY_LEAVE = Step(
    LINGER,
    """
local mine = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if mine <= 0 then
  return {tonumber(redis.call('HGET', KEYS[2], ARGV[3]) or '0'), 0}
end
local k = 1
if ARGV[4] == '1' then k = mine end
if mine <= k then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('SREM', KEYS[4], cjson.encode({'sub', ARGV[2], ARGV[3]}))
else
  redis.call('HINCRBY', KEYS[1], ARGV[1], -k)
end
local total = redis.call('HINCRBY', KEYS[2], ARGV[3], -k)
if total <= 0 then
  redis.call('HDEL', KEYS[2], ARGV[3])
  redis.call('ZREM', KEYS[3], ARGV[3])
  if ARGV[5] and ARGV[5] ~= '' then
    return {0, 1, linger(KEYS[5], ARGV[5], ARGV[6])}
  end
  return {0, 1}
end
return {total, 0}
""",
)

# KEYS: counts, channels, owned, then one nodes key per channel;
# ARGV: node, app, then channel, sockets pairs
# -> per channel {count, 1 occupied / -1 vacated / 0}
OCCUPANCY_SET = Script(
    """
local result = {}
for i = 4, #KEYS do
  local channel = ARGV[(i - 4) * 2 + 3]
  local k = tonumber(ARGV[(i - 4) * 2 + 4])
  local old = tonumber(redis.call('HGET', KEYS[i], ARGV[1]) or '0')
  local entry = cjson.encode({'sub', ARGV[2], channel})
  if k > 0 then
    redis.call('HSET', KEYS[i], ARGV[1], k)
    redis.call('SADD', KEYS[3], entry)
  else
    redis.call('HDEL', KEYS[i], ARGV[1])
    redis.call('SREM', KEYS[3], entry)
  end
  local before = tonumber(redis.call('HGET', KEYS[1], channel) or '0')
  local total = before
  if k ~= old then total = redis.call('HINCRBY', KEYS[1], channel, k - old) end
  local change = 0
  if total <= 0 then
    redis.call('HDEL', KEYS[1], channel)
    redis.call('ZREM', KEYS[2], channel)
    total = 0
    if before > 0 then change = -1 end
  else
    redis.call('ZADD', KEYS[2], 0, channel)
    if before <= 0 then change = 1 end
  end
  result[#result + 1] = {total, change}
end
return result
"""
)

# KEYS: conns, connections, owned; ARGV: node, app, limit (0: none)
# -> the app's connections with this one, or -1 when at the limit
CONNECTION_OPEN = Step(
    "",
    """
local limit = tonumber(ARGV[3])
if limit > 0 and tonumber(redis.call('GET', KEYS[2]) or '0') >= limit then
  return -1
end
if redis.call('HINCRBY', KEYS[1], ARGV[1], 1) == 1 then
  redis.call('SADD', KEYS[3], cjson.encode({'conn', ARGV[2]}))
end
return redis.call('INCR', KEYS[2])
""",
)

# KEYS: conns, connections, owned; ARGV: node, app, all
# -> the app's connections left
CONNECTION_CLOSE = Script(
    """
local mine = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if mine <= 0 then
  return tonumber(redis.call('GET', KEYS[2]) or '0')
end
local k = 1
if ARGV[3] == '1' then k = mine end
if mine <= k then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('SREM', KEYS[3], cjson.encode({'conn', ARGV[2]}))
else
  redis.call('HINCRBY', KEYS[1], ARGV[1], -k)
end
local total = redis.call('DECRBY', KEYS[2], k)
if total <= 0 then
  redis.call('DEL', KEYS[2])
  return 0
end
return total
"""
)

# KEYS: conns, connections, owned; ARGV: node, app, sockets
# -> the app's connections
CONNECTION_SET = Script(
    """
local k = tonumber(ARGV[3])
local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local entry = cjson.encode({'conn', ARGV[2]})
if k > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], k)
  redis.call('SADD', KEYS[3], entry)
else
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('SREM', KEYS[3], entry)
end
local total = redis.call('INCRBY', KEYS[2], k - old)
if total <= 0 then
  redis.call('DEL', KEYS[2])
  return 0
end
return total
"""
)

# The member events: with the channel's meta key as KEYS[6] (and its
# recovery history as KEYS[7]) and the broker's publish arguments (bus, a
# new epoch, the event's body, the meta key's TTL, and with the history
# its length and TTL) after the others, a join that makes a member (a leave that
# ends one) publishes its member event in the same atomic step, as the
# broker's publish script does (``cluster/broker``).
ANNOUNCE = """
local function announce(ARGV, meta, first, hist)
  local offset = redis.call('HINCRBY', meta, 's', 1)
  local epoch = redis.call('HGET', meta, 'e')
  if not epoch then
    epoch = ARGV[first + 1]
    redis.call('HSET', meta, 'e', epoch)
    if hist then
      redis.call('DEL', hist)
    end
  end
  redis.call('EXPIRE', meta, ARGV[first + 3])
  if hist and ARGV[first + 4] and ARGV[first + 4] ~= '0' then
    -- a place holder in the recovery history: its offset counts, a
    -- recovery does not send it (as the broker's publish script keeps it)
    local now = redis.call('TIME')[1]
    local added = redis.pcall('XADD', hist, 'MAXLEN', '~', ARGV[first + 4],
      offset .. '-0', 't', now, 'b', '')
    if type(added) == 'table' and added.err then
      redis.call('DEL', hist)
      redis.call('XADD', hist, offset .. '-0', 't', now, 'b', '')
    end
    redis.call('EXPIRE', hist, ARGV[first + 5])
  end
  redis.call('PUBLISH', ARGV[first], epoch .. ':' .. offset .. ':' .. ARGV[first + 2])
end
"""

# KEYS: members, mcount, mnode, ucounts, owned, lingering[, meta];
# ARGV: node, app, channel, user, member, limit (0: none), pending (""
# for none)[, bus, epoch, body, ttl]
# -> nil when the user is new and the channel full, else {1 when the user
#    became a member, members (flat user, member list), {offset, epoch}
#    of the channel's events once the members were read (with a meta key;
#    else false), 1 when becoming a member undid its lingering
#    member_removed}
PRESENCE_JOIN = Step(
    ANNOUNCE + LINGER,
    """
local limit = tonumber(ARGV[6])
if limit > 0 and redis.call('HEXISTS', KEYS[2], ARGV[4]) == 0
    and redis.call('HLEN', KEYS[1]) >= limit then
  return false
end
if redis.call('HINCRBY', KEYS[3], ARGV[1] .. '|' .. ARGV[4], 1) == 1 then
  redis.call('SADD', KEYS[5], cjson.encode({'pres', ARGV[2], ARGV[3], ARGV[4]}))
end
local new = 0
local undone = 0
if redis.call('HINCRBY', KEYS[2], ARGV[4], 1) == 1 then
  redis.call('HSET', KEYS[1], ARGV[4], ARGV[5])
  redis.call('HINCRBY', KEYS[4], ARGV[3], 1)
  new = 1
  undone = undo(KEYS[6], ARGV[7])
end
local position = false
if KEYS[7] then
  if new == 1 then
    announce(ARGV, KEYS[7], 8, KEYS[8])
  end
  local top = redis.call('HMGET', KEYS[7], 's', 'e')
  position = {tonumber(top[1] or '0'), top[2] or ''}
end
return {new, redis.call('HGETALL', KEYS[1]), position, undone}
""",
)

# KEYS: members, mcount, mnode, ucounts, owned, lingering[, meta];
# ARGV: node, app, channel, user, all, pending ("" for none), linger ms[,
# bus, epoch, body, ttl]
# -> 1 when the member left (the user's last socket anywhere), or the
#    deadline of its lingering member_removed when it left with a pending
#    entry; else 0
PRESENCE_LEAVE = Step(
    ANNOUNCE + LINGER,
    """
local field = ARGV[1] .. '|' .. ARGV[4]
local mine = tonumber(redis.call('HGET', KEYS[3], field) or '0')
if mine <= 0 then
  return 0
end
local k = 1
if ARGV[5] == '1' then k = mine end
if mine <= k then
  redis.call('HDEL', KEYS[3], field)
  redis.call('SREM', KEYS[5], cjson.encode({'pres', ARGV[2], ARGV[3], ARGV[4]}))
else
  redis.call('HINCRBY', KEYS[3], field, -k)
end
if redis.call('HINCRBY', KEYS[2], ARGV[4], -k) > 0 then
  return 0
end
redis.call('HDEL', KEYS[2], ARGV[4])
redis.call('HDEL', KEYS[1], ARGV[4])
if redis.call('HINCRBY', KEYS[4], ARGV[3], -1) <= 0 then
  redis.call('HDEL', KEYS[4], ARGV[3])
end
if KEYS[7] then
  announce(ARGV, KEYS[7], 8, KEYS[8])
end
if ARGV[6] and ARGV[6] ~= '' then
  return linger(KEYS[6], ARGV[6], ARGV[7])
end
return 1
""",
)

# KEYS: members, meta; ARGV: node, user, bus, epoch, body, ttl
# -> 1 when the user is no member (its member_removed published), else 0:
#    a member whose leave (or join) failed while Redis was away, once
#    Redis restarted empty and the nodes wrote their members again
PRESENCE_GONE = Step(
    ANNOUNCE,
    """
if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 1 then
  return 0
end
announce(ARGV, KEYS[2], 3, KEYS[3])
return 1
""",
)

# KEYS: members, mcount, mnode, ucounts, owned, lingering;
# ARGV: node, app, channel, then user, member, sockets triples
# -> per user 1 (became a member), -1 (left) or 0
PRESENCE_SET = Script(
    """
local result = {}
for i = 4, #ARGV, 3 do
  local user, member, k = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local field = ARGV[1] .. '|' .. user
  local entry = cjson.encode({'pres', ARGV[2], ARGV[3], user})
  local old = tonumber(redis.call('HGET', KEYS[3], field) or '0')
  if k > 0 then
    redis.call('HSET', KEYS[3], field, k)
    redis.call('SADD', KEYS[5], entry)
  else
    redis.call('HDEL', KEYS[3], field)
    redis.call('SREM', KEYS[5], entry)
  end
  local before = tonumber(redis.call('HGET', KEYS[2], user) or '0')
  local after = before + k - old
  local change = 0
  if after > 0 then
    redis.call('HSET', KEYS[2], user, after)
    if before <= 0 then
      redis.call('HSET', KEYS[1], user, member)
      redis.call('HINCRBY', KEYS[4], ARGV[3], 1)
      change = 1
    end
  else
    redis.call('HDEL', KEYS[2], user)
    if before > 0 then
      redis.call('HDEL', KEYS[1], user)
      if redis.call('HINCRBY', KEYS[4], ARGV[3], -1) <= 0 then
        redis.call('HDEL', KEYS[4], ARGV[3])
      end
      change = -1
    end
  end
  result[#result + 1] = change
end
return result
"""
)

# KEYS: users, unode, owned; ARGV: node, app, user
# -> 1 when the user came online (its first signed-in socket anywhere)
USER_IN = Step(
    "",
    """
if redis.call('HINCRBY', KEYS[2], ARGV[1] .. '|' .. ARGV[3], 1) == 1 then
  redis.call('SADD', KEYS[3], cjson.encode({'user', ARGV[2], ARGV[3]}))
end
if redis.call('HINCRBY', KEYS[1], ARGV[3], 1) == 1 then
  return 1
end
return 0
""",
)

# KEYS: users, unode, owned; ARGV: node, app, user, all
# -> 1 when the user went offline (its last signed-in socket anywhere)
USER_OUT = Step(
    "",
    """
local field = ARGV[1] .. '|' .. ARGV[3]
local mine = tonumber(redis.call('HGET', KEYS[2], field) or '0')
if mine <= 0 then
  return 0
end
local k = 1
if ARGV[4] == '1' then k = mine end
if mine <= k then
  redis.call('HDEL', KEYS[2], field)
  redis.call('SREM', KEYS[3], cjson.encode({'user', ARGV[2], ARGV[3]}))
else
  redis.call('HINCRBY', KEYS[2], field, -k)
end
if redis.call('HINCRBY', KEYS[1], ARGV[3], -k) > 0 then
  return 0
end
redis.call('HDEL', KEYS[1], ARGV[3])
return 1
""",
)

# KEYS: users, unode, owned; ARGV: node, app, then user, sockets pairs
# -> per user 1 (came online), -1 (went offline) or 0
USER_SET = Script(
    """
local result = {}
for i = 3, #ARGV, 2 do
  local user, k = ARGV[i], tonumber(ARGV[i + 1])
  local field = ARGV[1] .. '|' .. user
  local entry = cjson.encode({'user', ARGV[2], user})
  local old = tonumber(redis.call('HGET', KEYS[2], field) or '0')
  if k > 0 then
    redis.call('HSET', KEYS[2], field, k)
    redis.call('SADD', KEYS[3], entry)
  else
    redis.call('HDEL', KEYS[2], field)
    redis.call('SREM', KEYS[3], entry)
  end
  local before = tonumber(redis.call('HGET', KEYS[1], user) or '0')
  local after = before + k - old
  local change = 0
  if after > 0 then
    redis.call('HSET', KEYS[1], user, after)
    if before <= 0 then change = 1 end
  else
    redis.call('HDEL', KEYS[1], user)
    if before > 0 then change = -1 end
  end
  result[#result + 1] = change
end
return result
"""
)


def _steps(*steps):
    """The script that runs ``steps`` (``Step``) in one call, in order:
    per step, its index, how many keys and how many arguments it has, then
    its arguments in ARGV, its keys in KEYS; answers each one's reply in a
    list (a step's false or nil as nil)."""
    functions = []
    for index, step in enumerate(steps, 1):
        step.index = index
        functions.append(
            "local function step%d(KEYS, ARGV)\n%s\nend\n" % (index, step.body)
        )
    return Script(
        LINGER
        + ANNOUNCE
        + "".join(functions)
        + "local steps = {%s}\n"
        % ", ".join("step%d" % i for i in range(1, len(steps) + 1))
        + """
local result, n, k, a = {}, 0, 0, 1
while a <= #ARGV do
  local step = steps[tonumber(ARGV[a])]
  local nkeys, nargs = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local keys, args = {}, {}
  for i = 1, nkeys do keys[i] = KEYS[k + i] end
  for i = 1, nargs do args[i] = ARGV[a + 2 + i] end
  n = n + 1
  result[n] = step(keys, args) or false
  k, a = k + nkeys, a + 3 + nargs
end
return result
"""
    )


# A loop turn's changes of a node (``cluster/seams``), in one call
STEPS = _steps(
    OCCUPANCY_JOIN,
    OCCUPANCY_LEAVE,
    CONNECTION_OPEN,
    PRESENCE_JOIN,
    PRESENCE_LEAVE,
    PRESENCE_GONE,
    USER_IN,
    USER_OUT,
)

# KEYS: nodes (pushi:nodes); ARGV: silence (ms)
# -> the nodes whose last heartbeat is older than silence, by Redis's clock
DEAD_NODES = Script(
    """
local now = redis.call('TIME')
local cutoff = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local limit = string.format('%.0f', cutoff - tonumber(ARGV[1]))
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', limit)
"""
)

# KEYS: lingering; ARGV: pending, deadline
# -> 1 when this call claimed the entry: still pending with that deadline
#    (not undone, nor undone and made again since), and now gone
LINGER_CLAIM = Script(
    """
local due = redis.call('ZSCORE', KEYS[1], ARGV[1])
if due and tonumber(due) == tonumber(ARGV[2]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 1
end
return 0
"""
)

# KEYS: lingering; ARGV: grace (ms), at most
# -> the pending entries whose deadline passed over grace ago (at most
#    that many, soonest first), claimed by this call: gone
LINGER_SWEEP = Script(
    LINGER
    + """
local limit = string.format('%.0f', now_ms() - tonumber(ARGV[1]))
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', limit,
  'LIMIT', 0, tonumber(ARGV[2]))
for _, pending in ipairs(due) do
  redis.call('ZREM', KEYS[1], pending)
end
return due
"""
)

# the keys


def app_key(app_id, name):
    """``pushi:{<app>}:<name>``: an app's key (``counts``, ``channels``,
    ``conns``, ``connections``, ``ucounts``, ``users``, ``unode``)."""
    return "pushi:{%s}:%s" % (app_id, name)


def channel_key(app_id, channel, name):
    """``pushi:{<app>}:ch:<channel>:<name>``: a channel's key (``nodes``,
    ``members``, ``mcount``, ``mnode``)."""
    return "pushi:{%s}:ch:%s:%s" % (app_id, channel, name)


def owned_key(node_id):
    """``pushi:node:<node>:owned``: what a node registered."""
    return "pushi:node:%s:owned" % node_id


NODES = "pushi:nodes"
""" ZSET node id -> last heartbeat (ms since the epoch) """


LINGERING = "pushi:lingering"
""" ZSET pending webhook entry -> its deadline (ms, by Redis's clock) """


def reap_key(node_id):
    """``pushi:reap:<node>``: the lock of whoever reaps that node."""
    return "pushi:reap:%s" % node_id


def occupancy_keys(app_id, channel, node_id):
    return (
        channel_key(app_id, channel, "nodes"),
        app_key(app_id, "counts"),
        app_key(app_id, "channels"),
        owned_key(node_id),
        LINGERING,
    )


def connection_keys(app_id, node_id):
    return (
        app_key(app_id, "conns"),
        app_key(app_id, "connections"),
        owned_key(node_id),
    )


def presence_keys(app_id, channel, node_id):
    return (
        channel_key(app_id, channel, "members"),
        channel_key(app_id, channel, "mcount"),
        channel_key(app_id, channel, "mnode"),
        app_key(app_id, "ucounts"),
        owned_key(node_id),
        LINGERING,
    )


def user_keys(app_id, node_id):
    return (app_key(app_id, "users"), app_key(app_id, "unode"), owned_key(node_id))
