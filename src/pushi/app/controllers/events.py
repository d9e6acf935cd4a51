"""Stored events: the history of a channel (``POST`` is the publisher)."""

import appier

from pushi.base.engine import public_event
from pushi.base.store.base import MAX_SKIP
from pushi.proto import channels as channel_names
from pushi.proto import errors

from .common import APP, PushiController


class EventsController(PushiController):
    @appier.route("/apps/%s/events" % APP, "GET", json=True)
    def history(self, app_id):
        """``?channel=&skip=&count=``: stored events, newest first."""
        app = self.authorize(app_id)
        channel = self.param("channel")
        if not channel_names.is_valid(channel):
            raise errors.HttpError(400, "A valid channel is required")
        skip = min(_count(self.param("skip", "0"), "skip"), MAX_SKIP)
        count = min(_count(self.param("count", "10"), "count"), 1000)
        events = self.state.store.get_events(app.app_id, [channel], skip, count)
        return {"channel": channel, "events": [public_event(event) for event in events]}


def _count(value, name):
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = -1
    if number < 0:
        raise errors.HttpError(400, "%s must be a non-negative integer" % name)
    return number
