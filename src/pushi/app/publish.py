"""The publish routes as plain WSGI, in front of the Appier app.

``POST /apps/<id>/events`` and ``POST /apps/<id>/batch_events`` are the hot
path of a push server; Appier's pipeline costs more than the HTTP server
under it, so these two routes are parsed, checked and handed to the loop
here, with the same ``Access`` rules as every other route.  Both bodies
are accepted on ``events``: Pusher's (``name``, ``channel``/``channels``,
``socket_id``, ``info``) and Pushi's (``event``, ``channel``, ``persist``).
"""

import concurrent.futures
import json
import logging
import re
import time
import urllib.parse

import netius

from pushi.proto import channels as channel_names
from pushi.proto import errors, messages

logger = logging.getLogger("pushi.app")

MAX_BODY = 262144

ROUTE = re.compile(r"^/apps/([^/]+)/(events|batch_events)/?$")
_SOCKET_ID = re.compile(r"^\d+\.\d+$")


def json_answer(start_response, status, body, headers=()):
    data = json.dumps(body, separators=(",", ":")).encode("utf-8")
    start_response(
        "%d %s" % (status, _REASONS.get(status, "Error")),
        [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
        + list(headers),
    )
    return [data]


def json_object(body):
    """A request body (bytes) as a JSON object; ``HttpError`` 400 if not."""
    try:
        payload = json.loads(body or b"{}")
    except ValueError:
        raise errors.HttpError(400, "Body is not valid JSON")
    if not isinstance(payload, dict):
        raise errors.HttpError(400, "Body is not a JSON object")
    return payload


def error_body(status, message):
    """The JSON body of every REST error (Appier's shape)."""
    return {"result": "error", "code": status, "message": message}


def _batch_item(answer):
    """One event's answer in a batch: Pusher gives the ``info`` attributes
    of its (single) channel directly, ``{"subscription_count": 2}``, not
    under ``channels`` as ``events`` does."""
    channels = answer.pop("channels", None)
    for attributes in (channels or {}).values():
        answer.update(attributes)
    return answer


_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class Publisher:
    """WSGI handler of the publish routes."""

    def __init__(self, state, access, app=None):
        self.state = state
        self.access = access
        self.app = app
        # where a persisted publish waits for its commit when the store has
        # no writer of its own to call back from (MongoDB)
        self.writers = concurrent.futures.ThreadPoolExecutor(
            16, thread_name_prefix="pushi-store"
        )

    def __call__(self, environ, start_response, match):
        try:
            app_id, route = match.group(1), match.group(2)
            body = self._body(environ)
            params = dict(
                urllib.parse.parse_qsl(
                    environ.get("QUERY_STRING", ""), keep_blank_values=True
                )
            )
            app = self.access.authorize(
                app_id,
                "POST",
                environ.get("PATH_INFO", ""),
                params,
                body,
                environ.get("HTTP_AUTHORIZATION"),
            )
            payload = json_object(body)
            if route == "events":
                events = [self.check(app, payload)]
            else:
                events = self.check_batch(app, payload)
            if self.state.broker.busy:
                raise errors.HttpError(503, "Server busy delivering: retry shortly")
            stored, deliveries, answers, queries = self.plan(app, events)
        except errors.HttpError as error:
            headers = [("Retry-After", "1")] if error.status == 503 else []
            return json_answer(
                start_response,
                error.status,
                error_body(error.status, error.message),
                headers,
            )

        def respond():
            self.complete(app, answers, queries)
            if route == "events":
                answer = answers[0]
            else:
                items = [_batch_item(answer) for answer in answers]
                answer = {"batch": items} if any(items) else {}
            return json_answer(start_response, 200, answer)

        loop = getattr(self.app, "_server", None)
        if not hasattr(loop, "delay_s"):
            # a WSGI server without netius's futures: store, hand over, answer
            if stored:
                self.state.store.add_events(stored)
            self.deliver(app, deliveries)
            return respond()
        return self._answer_later(
            loop, app, stored, deliveries, respond, start_response
        )

    def _answer_later(self, loop, app, stored, deliveries, respond, start_response):
        """The answer as a netius WSGI iterator.  It yields futures that the
        commit (when something is stored) and then the delivery resolve on
        the HTTP loop, which serves other requests meanwhile.  Answering
        once the event is written to every subscriber keeps a publisher
        from getting ahead of the fan-out: requests in flight bound what
        waits for the WebSocket loop."""

        def later():
            future = netius.Future()

            def resolve(value=None):
                loop.delay_s(lambda: future.set_result(value))

            return future, resolve

        def answer():
            if stored:
                committed, resolve = later()
                self.state.store.add_events_then(stored, resolve, self.writers)
                yield committed
                if committed.result() is not None:
                    logger.error("storing events failed: %s", committed.result())
                    body = error_body(503, "Store unavailable")
                    for part in json_answer(
                        start_response, 503, body, [("Retry-After", "1")]
                    ):
                        yield part
                    return
            delivered, resolve = later()
            self.deliver(app, deliveries, resolve)
            yield delivered
            for part in respond():
                yield part

        return answer()

    @staticmethod
    def _body(environ):
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            raise errors.HttpError(400, "Invalid Content-Length")
        if length > MAX_BODY:
            raise errors.HttpError(413, "Body over %d bytes" % MAX_BODY)
        return environ["wsgi.input"].read(length) if length > 0 else b""

    def check_batch(self, app, payload):
        batch = payload.get("batch")
        if not isinstance(batch, list) or not batch:
            raise errors.HttpError(400, "batch must be a non-empty list")
        if len(batch) > app.limits["max_batch"]:
            raise errors.HttpError(
                400, "Batch over %d events" % app.limits["max_batch"]
            )
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
        if len(name) > app.limits["max_event_name"]:
            raise errors.HttpError(
                400, "Event name over %d characters" % app.limits["max_event_name"]
            )
        if "channels" in payload and not batch:
            names = payload["channels"]
            if not isinstance(names, list) or not names:
                raise errors.HttpError(400, "channels must be a non-empty list")
        elif "channel" in payload:
            names = [payload["channel"]]
        else:
            raise errors.HttpError(400, "Missing channel")
        if len(names) > app.limits["max_publish_channels"]:
            raise errors.HttpError(
                400, "Over %d channels" % app.limits["max_publish_channels"]
            )
        for channel in names:
            if not channel_names.is_valid(channel, app.limits["max_channel_name"]):
                raise errors.HttpError(400, "Invalid channel name: %.64r" % (channel,))
        data = payload.get("data")
        if pushi_body and not isinstance(data, str):
            # events carry their data as a string, as on Pusher
            data = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        if not isinstance(data, str):
            raise errors.HttpError(400, "data must be a string")
        size = len(data.encode("utf-8"))
        if size > app.limits["max_event_data"]:
            raise errors.HttpError(
                413, "Event data over %d bytes" % app.limits["max_event_data"]
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
        the answers and the ``info`` queries that complete them.  A stored event gets a message id (``mid``) and a
        ``timestamp`` per channel, which its delivery carries too."""
        stored = []
        deliveries = []
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
        """Hands the deliveries to the loop; ``done()`` runs (on the loop)
        once the last of them is written."""
        last = len(deliveries) - 1
        for index, (names, name, data, socket_id, extra) in enumerate(deliveries):
            event = (app.app_id, names, name, data, socket_id, extra)
            self.state.broker.publish(event, done if index == last else None)

    def complete(self, app, answers, queries):
        """Fills the ``info`` asked for in the answers."""
        for answer, (names, info) in zip(answers, queries):
            if info:
                answer["channels"] = self.state.call_in_loop(
                    self._info, app.app_id, names, info
                )

    def _info(self, app_id, names, info):
        engine = self.state.engine
        result = {}
        for channel in names:
            details = engine.channel_info(app_id, channel, info)
            details.pop("occupied", None)
            details.pop("cache", None)
            result[channel] = details
        return result
