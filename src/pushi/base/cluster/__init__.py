"""Pushi as one node of a cluster on one Redis (``PUSHI_REDIS_URL``).

``node``: this process's registration (node id, heartbeat, fencing,
health) and its two Redis connections; ``broker``: the broker seam over
Redis (every event through one publish script and every node's
subscription); ``seams``, ``lua`` and ``reaper``: the presence, occupancy
and signed-in users twins over Redis, and the reaping of dead nodes;
``linger``: the webhooks' 3 s linger kept by those twins' scripts;
``control``, ``spans``, ``tokens`` and ``stores``: what else spans the
nodes (app changes, terminations, personal channels, session tokens, one
store, retention on one node).  Without ``PUSHI_REDIS_URL`` none of this
is built and the in-process twins serve one process.
"""
