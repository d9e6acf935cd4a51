"""The publish routes, ahead of the Appier app.

``POST /apps/<id>/events`` and ``POST /apps/<id>/batch_events`` are the hot
path of a push server.  On the REST port's own HTTP server (``net/httpd``)
they are answered on the loop that owns the sockets (``handle``): parsed,
checked with the same ``Access`` rules as every other route, handed to the
broker, and answered in the loop turn that writes the event to every
subscriber (after its commit, when it is stored), so a publisher cannot
outrun the fan-out.
Under another WSGI server, and for an app not yet in memory, the WSGI entry
(``__call__``) does the same from a worker thread, blocking.  Both bodies
are accepted on ``events``: Pusher's (``name``, ``channel``/``channels``,
``socket_id``, ``info``) and Pushi's (``event``, ``channel``, ``persist``).
"""

import logging
import re
import threading
import time
import urllib.parse
from typing import Any

from pushi.base import rates
from pushi.base.access import NeedsStore
from pushi.base.broker import Event
from pushi.proto import channels as channel_names
from pushi.proto import errors, messages
from pushi.proto.http import MAX_BODY, error_response, json_response

logger = logging.getLogger("pushi.app")

ROUTE = re.compile(r"^/apps/([^/]+)/(events|batch_events)/?\Z")
_SOCKET_ID = re.compile(r"^[0-9]+\.[0-9]+\Z")

DELIVERY_TIMEOUT = 30
""" Seconds a blocking publish waits for its delivery before answering """


def json_object(body):
    """A request body (bytes) as a JSON object; ``HttpError`` 400 if not."""
    try:
        payload = messages.loads(body or b"{}")
    except messages.TooDeep as error:
        raise errors.HttpError(400, str(error)) from None
    except ValueError:
        raise errors.HttpError(400, "Body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise errors.HttpError(400, "Body is not a JSON object")
    return payload


def query_params(query):
    """A query string as a dict, one value per name; ``HttpError`` 400 if a
    name repeats.  A signature covers one value per name: with two, the
    route could read another value than the one that was signed."""
    pairs = urllib.parse.parse_qsl(query or "", keep_blank_values=True)
    params = dict(pairs)
    if len(params) != len(pairs):
        raise errors.HttpError(400, "Repeated query parameter")
    return params


def _batch_item(answer):
    """One event's answer in a batch: Pusher gives the ``info`` attributes
    of its (single) channel directly, ``{"subscription_count": 2}``, not
    under ``channels`` as ``events`` does."""
    channels = answer.pop("channels", None)
    for attributes in (channels or {}).values():
        answer.update(attributes)
    return answer


def _call(work, *args):
    return work(*args)


def _unavailable(stored=False):
    """The 503 of a publish the broker could not deliver (Redis down, too
    slow or refusing; the broker logs why, once per outage): nothing was
    queued, the publisher retries (a stored event is in the store
    already: a retry stores it again)."""
    if stored:
        return errors.HttpError(503, "Server unavailable: event stored, not delivered")
    return errors.HttpError(503, "Server unavailable: event not delivered")


_NO_INFO = errors.HttpError(503, "Server unavailable: event delivered, info not read")
""" The answer of a publish delivered whose ``info`` could not be read """


class Publisher:
    """The publish routes, on the loop (``handle``) or as WSGI."""

    def __init__(self, state, access):
        self.state = state
        self.access = access
        # where a persisted publish waits for its commit when the store has
        # no writer of its own to call back from (MongoDB)
        self.writers = state.threads.pool("store")

    def handle(self, request, match, answer):
        """Publishes a ``proto.http.Request`` on the loop thread and calls
        ``answer(status, headers, body)`` there in the turn that writes it;
        False (nothing done) for an app that is not in memory yet, which
        must be read from the store off the loop."""
        if self.state.apps.by_id(match.group(1)) is None:
            return False
        try:
            app, route, stored, deliveries, answers, queries = self.prepare(
                match,
                request.path,
                request.query,
                request.body,
                request.headers.get("authorization"),
                blocking=False,
            )
        except errors.HttpError as error:
            answer(*error_response(error))
            return True
        except NeedsStore:
            return False

        metrics = self.state.metrics
        started = time.monotonic()

        def respond(error):
            if error is not None:
                answer(*error_response(_unavailable(bool(stored))))
                return
            if self.state.cluster is not None and any(info for _n, info in queries):
                # a node's counts are Redis reads, which must not hold the
                # loop: on a worker, then answered on the loop
                self.state.offload(
                    lambda: self.completed(app, answers, queries, _call), finish
                )
                return
            finish(self.completed(app, answers, queries, _call))

        def finish(completed):
            if not completed:
                answer(*error_response(_NO_INFO))
                return
            answer(*json_response(200, self.answer(route, answers)))
            metrics.publish_answered(request.received)

        def committed(error):
            # on the loop, or on a store thread
            if error is None:
                metrics.store_commit.observe(time.monotonic() - started)
                self.deliver(app, deliveries, respond)
                return
            logger.error("storing events failed: %s", error)
            failure = errors.HttpError(503, "Store unavailable")
            self.state.call_soon(answer, *error_response(failure))

        if stored:
            self.state.store.add_events_then(stored, committed, self.writers)
        else:
            self.deliver(app, deliveries, respond)
        return True

    def __call__(self, environ, start_response, match):
        """The WSGI entry: blocks until the events are stored and written."""
        received = time.monotonic()
        try:
            try:
                length = int(environ.get("CONTENT_LENGTH") or 0)
            except ValueError:
                raise errors.HttpError(400, "Invalid Content-Length") from None
            if length > MAX_BODY:
                raise errors.HttpError(413, "Body over %d bytes" % MAX_BODY)
            body = environ["wsgi.input"].read(length) if length > 0 else b""
            app, route, stored, deliveries, answers, queries = self.prepare(
                match,
                environ.get("PATH_INFO", ""),
                environ.get("QUERY_STRING", ""),
                body,
                environ.get("HTTP_AUTHORIZATION"),
            )
            if stored:
                started = time.monotonic()
                try:
                    self.state.store.add_events(stored)
                except Exception as error:
                    logger.error("storing events failed: %s", error)
                    raise errors.HttpError(503, "Store unavailable") from error
                self.state.metrics.store_commit.observe(time.monotonic() - started)
        except errors.HttpError as error:
            status, headers, data = error_response(error)
            start_response(status, headers)
            return [data]
        delivered = threading.Event()
        failed = []

        def done(error):
            if error is not None:
                failed.append(error)
            delivered.set()

        self.deliver(app, deliveries, done)
        if delivered.wait(DELIVERY_TIMEOUT):
            if failed:
                status, headers, data = error_response(_unavailable(bool(stored)))
                start_response(status, headers)
                return [data]
            self.state.metrics.publish_latency.observe(time.monotonic() - received)
        # on this thread for a cluster node, whose counts are Redis reads
        if not self.completed(app, answers, queries, self.state.query):
            status, headers, data = error_response(_NO_INFO)
            start_response(status, headers)
            return [data]
        status, headers, data = json_response(200, self.answer(route, answers))
        start_response(status, headers)
        return [data]

    def prepare(self, match, path, query, body, authorization, blocking=True):
        """Authorizes and checks a publish request; returns ``(app, route,
        stored, deliveries, answers, queries)`` (see ``plan``) or raises
        ``HttpError`` (``NeedsStore`` when not ``blocking``: see
        ``Access.authorize``)."""
        app_id, route = match.group(1), match.group(2)
        params = query_params(query)
        app = self.access.authorize(
            app_id, "POST", path, params, body, authorization, blocking=blocking
        )
        payload = json_object(body)
        if route == "events":
            events = [self.check(app, payload)]
        else:
            events = self.check_batch(app, payload)
        if self.state.broker.busy:
            raise errors.HttpError(503, "Server busy delivering: retry shortly")
        # one per channel an event goes to, as soketi counts
        cost = sum(len(names) for _name, names, *_rest in events)
        self.access.admit(app, rates.PUBLISHES, authorization, cost)
        return (app, route) + self.plan(app, events)

    @staticmethod
    def answer(route, answers):
        if route == "events":
            return answers[0]
        items = [_batch_item(answer) for answer in answers]
        return {"batch": items} if any(items) else {}

    def check_batch(self, app, payload):
        batch = payload.get("batch")
        if not isinstance(batch, list) or not batch:
            raise errors.HttpError(400, "batch must be a non-empty list")
        if len(batch) > app.limits.max_batch:
            raise errors.HttpError(400, "Batch over %d events" % app.limits.max_batch)
        return [self.check(app, item, batch=True) for item in batch]

    def check(self, app, payload, batch=False):
        """Validates one event body into ``(name, channels, data, socket_id,
        info, persist)``; raises ``HttpError`` 400/413."""
        if not isinstance(payload, dict):
            raise errors.HttpError(400, "Each event must be a JSON object")
        pushi_body = "event" in payload and "name" not in payload
        name = payload.get("event") if pushi_body else payload.get("name")
        if not isinstance(name, str) or not name:
            raise errors.HttpError(400, "Missing event name (name)")
        if len(name) > app.limits.max_event_name:
            raise errors.HttpError(
                400, "Event name over %d characters" % app.limits.max_event_name
            )
        if "channels" in payload and not batch:
            names = payload["channels"]
            if not isinstance(names, list) or not names:
                raise errors.HttpError(400, "channels must be a non-empty list")
        elif "channel" in payload:
            names = [payload["channel"]]
        else:
            raise errors.HttpError(400, "Missing channel")
        if len(names) > app.limits.max_publish_channels:
            raise errors.HttpError(
                400, "Over %d channels" % app.limits.max_publish_channels
            )
        for channel in names:
            if not channel_names.is_valid(channel, app.limits.max_channel_name):
                raise errors.HttpError(400, "Invalid channel name: %.64r" % (channel,))
        data = payload.get("data")
        if pushi_body and not isinstance(data, str):
            # events carry their data as a string, as on Pusher
            data = messages.dumps(data)
        if not isinstance(data, str):
            raise errors.HttpError(400, "data must be a string")
        size = len(data.encode("utf-8"))
        if size > app.limits.max_event_data:
            raise errors.HttpError(
                413, "Event data over %d bytes" % app.limits.max_event_data
            )
        socket_id = payload.get("socket_id")
        if socket_id is not None and (
            not isinstance(socket_id, str) or not _SOCKET_ID.match(socket_id)
        ):
            raise errors.HttpError(400, "Invalid socket_id")
        info = payload.get("info") or ""
        if not isinstance(info, str):
            raise errors.HttpError(400, "info must be a comma-separated string")
        info = tuple(part.strip() for part in info.split(",") if part.strip())
        persist = payload.get("persist", pushi_body) is True
        return name, names, data, socket_id, info, persist

    @staticmethod
    def plan(app, events):
        """Splits checked events into the records to store, the deliveries,
        the answers and the ``info`` queries that complete them.  A stored
        event gets a message id (``mid``) and a ``timestamp`` per channel,
        which its delivery carries too."""
        stored = []
        # (channels, event name, data, socket_id, the stored event's mid
        # and timestamp or None)
        deliveries: list[tuple[list[str], str, Any, Any, dict[str, Any] | None]] = []
        answers = []
        queries = []
        for name, names, data, socket_id, info, persist in events:
            answer = {}
            if not persist:
                deliveries.append((names, name, data, socket_id, None))
            else:
                timestamp = time.time()
                for channel in names:
                    mid = messages.message_id(timestamp)
                    stored.append(
                        {
                            "mid": mid,
                            "app_id": app.app_id,
                            "channel": channel,
                            "event": name,
                            "data": data,
                            "timestamp": timestamp,
                            "user_id": None,
                        }
                    )
                    extra = {"mid": mid, "timestamp": timestamp}
                    deliveries.append(([channel], name, data, socket_id, extra))
                if len(names) == 1:
                    answer["mid"] = stored[-1]["mid"]
                answer["timestamp"] = timestamp
            answers.append(answer)
            queries.append((names, info))
        return stored, deliveries, answers, queries

    def deliver(self, app, deliveries, done=None):
        """Hands the deliveries to the broker; ``done(error)`` runs (on the
        loop) once every one of them is on its way (queued on its sockets,
        in the turn that writes the last one, with the local broker):
        ``error`` None, or the first failure of the broker."""
        # deliveries still on their way, and the first failure
        left: list[Any] = [len(deliveries), None]

        def delivered(error):
            if error is not None and left[1] is None:
                left[1] = error
            left[0] -= 1
            if not left[0] and done is not None:
                done(left[1])

        for names, name, data, socket_id, extra in deliveries:
            event = Event(app.app_id, tuple(names), name, data, socket_id, extra)
            self.state.broker.publish(event, delivered)

    def completed(self, app, answers, queries, call):
        """Fills the ``info`` asked for in the answers; ``call(work,
        *args)`` runs ``work`` where the seams are read (``State.query``:
        the loop for one process, directly when already there).  False
        (logged) when they could not be read (a node's Redis away)."""
        try:
            for answer, (names, info) in zip(answers, queries, strict=True):
                if info:
                    answer["channels"] = call(self._info, app.app_id, names, info)
        except Exception as error:
            logger.warning("publish info not read: %s", error)
            return False
        return True

    def _info(self, app_id, names, info):
        engine = self.state.engine
        result = {}
        for channel in names:
            details = engine.channel_info(app_id, channel, info)
            details.pop("occupied", None)
            details.pop("cache", None)
            result[channel] = details
        return result
