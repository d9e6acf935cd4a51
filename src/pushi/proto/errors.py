"""Protocol errors, each carrying the answer the client gets.

A ``ProtocolError`` becomes a ``pusher:error`` (and, for the 4000-4299
codes, a close of the connection with the same code); a
``SubscriptionError`` becomes a ``pusher:subscription_error`` and leaves the
socket open; an ``HttpError`` becomes a JSON 4xx answer.
"""

from typing import Any

# connection level: pusher:error then close with the same code
UNKNOWN_APP = 4001
APP_DISABLED = 4003
OVER_QUOTA = 4004
BAD_PATH = 4005
BAD_PROTOCOL = 4007
UNAUTHORIZED = 4009
OVER_CAPACITY = 4100
SLOW_CONSUMER = 4100
TOO_MANY_PINGS = 4100
OVER_CONNECTION_RATE = 4100
GOING_AWAY = 4200
PONG_TIMEOUT = 4201

# message level: pusher:error, connection stays open
INVALID_MESSAGE = 4300
RATE_LIMITED = 4301
WATCHLIST_LIMIT = 4302
CLIENT_EVENT_REJECTED = 4303
UNKNOWN_EVENT = 4304
STORE_UNAVAILABLE = 4305
SUBSCRIPTION_REFUSED = 4306


class AnswerError(Exception):
    """Base of the errors that are answers to a client, never crashes."""

    def __init__(self, message: str) -> None:
        Exception.__init__(self, message)
        self.message = message


class ProtocolError(AnswerError):
    """A ``pusher:error`` with ``code``; codes below 4300 also close.  A
    ``channel`` names the channel of the request refused (``pusher:latest``),
    so that a client can tell which of its requests it answers."""

    def __init__(self, code: int, message: str, channel: str | None = None) -> None:
        AnswerError.__init__(self, message)
        self.code = code
        self.channel = channel

    @property
    def closes(self) -> bool:
        return self.code < 4300


class SubscriptionError(AnswerError):
    """A ``pusher:subscription_error`` for ``channel``; the socket stays.
    With ``pusher_error``, a ``pusher:error`` (``SUBSCRIPTION_REFUSED``)
    with the same message follows: Pusher's answer to a bad signature."""

    def __init__(
        self,
        channel: str | None,
        message: str,
        status: int = 401,
        type: str = "AuthError",
        pusher_error: bool = False,
    ) -> None:
        AnswerError.__init__(self, message)
        self.channel = channel
        self.status = status
        self.type = type
        self.pusher_error = pusher_error


class HttpError(AnswerError):
    """A JSON error answer of the REST API with HTTP ``status``;
    ``retry_after`` (seconds) goes out as ``Retry-After`` (a 503 says 1
    without it)."""

    def __init__(
        self, status: int, message: str, retry_after: int | None = None
    ) -> None:
        AnswerError.__init__(self, message)
        self.status = status
        if retry_after is None and status == 503:
            retry_after = 1
        self.retry_after = retry_after

    @property
    def code(self) -> int:
        """The HTTP status, under the name Appier's error handler reads."""
        return self.status

    @property
    def body(self) -> dict[str, Any]:
        """The JSON body of the answer (Appier's shape for every error)."""
        return {"result": "error", "code": self.status, "message": self.message}
