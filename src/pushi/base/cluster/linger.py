"""The webhook linger of a cluster: ``channel_vacated`` and
``member_removed`` wait (``Webhooks.linger``, 3 s) and are dropped, with
the ``channel_occupied`` or ``member_added`` that undoes them in that
window, whichever nodes the two come to, as on one process.

The scripts that decide the transitions (``cluster/lua``) keep the
lingering ones in ``pushi:lingering``: a leave that vacates a channel or
removes a member adds its pending entry with its deadline, and a join
that occupies the channel or adds the member again removes it in the same
step and answers that it did (``lingered``: the engine tells the
observers so, and the webhooks post neither).  The node whose leave added
an entry claims it once its linger is over (``LINGER_CLAIM``: only the
entry of that deadline, so one undone and made again is the later leave's
node's) and posts its webhook if it did.  Every node sweeps the entries
``GRACE`` seconds past their deadline (``LINGER_SWEEP``, which claims
them in the same step) and posts theirs: the webhook of a node that died
or stopped meanwhile is posted once too.  A pending entry lost with a
Redis that restarted empty posts nothing.

Loop thread only, like the ``Redis`` connection it uses.
"""

import json
import logging

from . import lua

logger = logging.getLogger("pushi")

GRACE = 3.0
""" Seconds past its deadline after which any node posts a lingering
webhook that the node of its leave has not claimed """

SWEEP_EVERY = 2.0
""" Seconds between two sweeps of a node """

SWEEP_MAX = 500
""" Entries one sweep claims at most """


class Linger:
    """The lingering webhooks through ``redis`` (a
    ``pushi.net.redis.Redis``).  ``seconds(app_id)`` is how long an app's
    vacated and removed webhooks linger (0: not at all, the app has no
    webhooks); ``post(app_id, kind, details)`` posts the webhook of an
    engine event (``vacated``, ``member_removed``) whose linger is over
    (``Webhooks.post``).  Without them (before the State binds the
    cluster) nothing lingers."""

    def __init__(self, redis, grace=GRACE):
        self.redis = redis
        self.grace = grace
        self.seconds = _never
        self.post = _drop
        self._timer = None

    def pending(self, app_id, channel, user_id=None):
        """``(entry, ms)`` for the scripts: the pending entry of the
        channel's vacated (of the member's removed, with ``user_id``) and
        its linger in ms; ``("", 0)`` when the app's webhooks linger
        not."""
        seconds = self.seconds(app_id)
        if not seconds:
            return "", 0
        names = [app_id, channel] if user_id is None else [app_id, channel, user_id]
        return json.dumps(names, separators=(",", ":")), int(seconds * 1000)

    def wait(self, entry, due, ms):
        """A leave added ``entry`` (see ``pending``) due at ``due`` (its
        script's answer): claimed in ``ms`` and posted if still pending."""

        def claimed(reply):
            if isinstance(reply, Exception):
                # still pending in Redis, if Redis kept it: a sweep posts it
                logger.debug("Redis: lingering webhook not claimed: %s", reply)
            elif reply == 1:
                self._post(entry)

        def claim():
            self.redis.evalsha(
                claimed, lua.LINGER_CLAIM, (lua.LINGERING,), (entry, due)
            )

        self.redis.loop.later(ms / 1000.0, claim)

    def start(self, loop, interval=SWEEP_EVERY):
        """Sweeps every ``interval`` seconds on ``loop`` until ``stop``."""
        self._timer = loop.every(interval, self.sweep)

    def stop(self):
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def sweep(self):
        """Claims the entries ``grace`` past their deadline and posts their
        webhooks (their nodes did not)."""

        def swept(reply):
            if isinstance(reply, Exception):
                logger.debug("Redis: lingering webhooks not swept: %s", reply)
                return
            for entry in reply:
                self._post(entry)

        self.redis.evalsha(
            swept,
            lua.LINGER_SWEEP,
            (lua.LINGERING,),
            (int(self.grace * 1000), SWEEP_MAX),
        )

    def _post(self, entry):
        try:
            names = json.loads(entry)
        except ValueError:
            return
        if not isinstance(names, list) or len(names) not in (2, 3):
            return
        if len(names) == 2:
            self.post(names[0], "vacated", {"channel": names[1]})
        else:
            self.post(
                names[0], "member_removed", {"channel": names[1], "user_id": names[2]}
            )


def _never(_app_id):
    return 0


def _drop(_app_id, _kind, _details):
    pass
