"""The Appier app: the REST API, the admin routes and the pages.

Controllers live in ``controllers/`` (one resource per file) and reach the
engine only through the ``State`` (``publish``, ``call_in_loop``).  The two
publish routes are answered by ``publish.Publisher`` before Appier's
pipeline; everything else is an ordinary Appier route.

On the REST port's own server (``net/httpd``, the default) the entry is
``serve_request``: publishing is done on the loop, and every other request
runs through Appier on one worker thread (Appier serves one request at a
time, as under its own servers), its answer written back from the loop.
"""

import logging
import os
import platform
import sys

import appier
import netius

import pushi
from pushi.base import store as stores
from pushi.proto import errors, http

from .publish import ROUTE, Publisher

logger = logging.getLogger("pushi.app")

AUTHORIZATION = "pushi.authorization"
""" Where the Authorization header waits in the WSGI environ """

_STATIC = ("/static/", "/appier/static/")
""" Where Appier serves files: an error there says no more than 404 """

_INSTALL_PATHS = tuple(
    {
        os.path.dirname(os.path.dirname(os.path.abspath(pushi.__file__))),
        os.path.dirname(os.path.abspath(appier.__file__)),
        sys.prefix,
    }
)
""" Where the code runs from: never named in an answer """


class PushiApp(appier.APIApp):
    """REST side of one Pushi process, bound to its ``State``."""

    def __init__(self, state, *args, **kwargs):
        self.state = state
        self.access = state.access
        self.publisher = Publisher(state, self.access)
        self.worker = state.threads.pool("rest")
        # service=False: none of Appier's own routes (/info, /versions,
        # /log, /debug, /login, /logout): no open admin endpoint, and /login
        # is Pushi's
        appier.APIApp.__init__(
            self,
            *args,
            name="pushi",
            service=False,
            session_c=appier.MemorySession,
            # Appier sets the level of its logger ("pushi", Pushi's too) and
            # of the root logger: PUSHI_LOG_LEVEL, not Appier's LEVEL
            level=logging.getLevelName(str(state.config.log_level).upper()),
            **kwargs,
        )
        # Appier names its header X-Content-Type-Option, which no browser
        # reads: ``after_request`` sends the real one
        self.content_options = None
        # under another APP_SERVER every answer passes ``application``,
        # which counts the refusals (the REST port's own server counts
        # them where it writes answers)
        self.counts_answers = False

    def _load_logging(self, *args, **kwargs):
        # Appier's logger ("pushi", Pushi's too) hands its records to the
        # root logger again, whose handler the launcher set: one format
        appier.APIApp._load_logging(self, *args, **kwargs)
        self.logger.parent = logging.getLogger()

    def _load_handlers(self, handlers=None, set_default=True):
        # none of Appier's handlers (a stream in its own format, which it
        # also puts in place of the root logger's, and an in-memory log
        # for its /log route, which is off)
        self.handlers = []
        self.handler_info = self.handler_error = None
        self.handler_stream = self.handler_syslog = self.handler_memory = None
        # Appier gives pymongo's logger (the MongoDB store's) a handler in
        # a format of its own, and keeps its records from the root's
        pymongo_logger = logging.getLogger("pymongo")
        for handler in list(pymongo_logger.handlers):
            pymongo_logger.removeHandler(handler)
        pymongo_logger.propagate = True

    def _print_welcome(self):
        # Appier's names its session, data adapter and manager classes: its
        # "MongoAdapter" is not Pushi's store, which State logs itself
        self.logger.info(
            "Pushi %s (appier %s, netius %s, Python %s)",
            pushi.__version__,
            appier.VERSION,
            netius.VERSION,
            platform.python_version(),
        )

    def serve_request(self, request, answer):
        """The HTTP server's handler (loop thread): see the module doc."""
        if request.method == "POST":
            match = ROUTE.match(request.path)
            if match is not None and self.publisher.handle(request, match, answer):
                return
        try:
            self.worker.submit(self._run, request, answer)
        except RuntimeError:
            # after ``drop_queued``
            answer(*http.error_response(errors.HttpError(503, "Server stopping")))

    def serve_final(self, server, method, host, port, kwargs):
        """Under another ``APP_SERVER``: the KeyboardInterrupt that stops
        the process (Ctrl-C, or SIGTERM in ``state.main``) ends the server
        as its return would, where Appier logs every exception as
        "Unhandled", with its traceback."""

        def serve(**kwargs):
            try:
                return method(**kwargs)
            except KeyboardInterrupt:
                return None

        return appier.APIApp.serve_final(self, server, serve, host, port, kwargs)

    def drop_queued(self):
        """The server stops: requests not started yet are dropped (their
        sockets close with the loop), later ones answered 503."""
        self.state.threads.stop("rest")

    def _run(self, request, answer):
        config = self.state.config
        try:
            result = http.call_wsgi(
                self.application,
                request,
                config.app_host,
                config.app_port,
                "https" if config.app_ssl else "http",
            )
        except Exception:
            logger.exception("unexpected error answering %s", request.path)
            result = http.error_response(errors.HttpError(500, "Internal error"))
        self.state.call_soon(answer, *result)

    def application(self, environ, start_response):
        if self.counts_answers:
            start_response = self._counted(start_response)
        if environ.get("REQUEST_METHOD") == "POST":
            match = ROUTE.match(environ.get("PATH_INFO", ""))
            if match is not None:
                return self.publisher(environ, start_response, match)
        try:
            # WSGI gives the path's bytes as latin-1; Appier decodes them
            # as UTF-8 and fails with a 500 on anything else
            environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8")
        except UnicodeError:
            status, headers, body = http.error_response(
                errors.HttpError(400, "Path is not UTF-8")
            )
            start_response(status, headers)
            return [body]
        # Appier reads Authorization as HTTP Basic and fails on a Bearer
        # token: the header is kept aside for Pushi's own checks
        environ[AUTHORIZATION] = environ.pop("HTTP_AUTHORIZATION", None)
        return appier.APIApp.application(self, environ, start_response)

    def _counted(self, start_response):
        def counted(status, headers, exc_info=None):
            if status[:1] in ("4", "5"):
                try:
                    self.state.call_soon(self.state.metrics.reject, "rest", status[:3])
                except errors.HttpError:
                    pass  # the loop has ended
            return start_response(status, headers, exc_info)

        return counted

    def route(self):
        # Appier runs a route once per item of a JSON body's "payload"
        # list (thousands of logins from one body); Pushi's routes read
        # their bodies themselves (``PushiController.body``)
        self.request.data_j = None
        return appier.APIApp.route(self)

    def after_request(self):
        """Headers every answer carries, and the debug console's tight
        Content-Security-Policy on its copies under ``/static/console/``
        (the ``/console`` route sets its own)."""
        appier.APIApp.after_request(self)
        self.request.set_header("X-Content-Type-Options", "nosniff")
        if self.request.path.startswith("/static/console/"):
            from .controllers.console import content_security

            self.request.set_header(
                "Content-Security-Policy", content_security(self.state.config)
            )

    def handle_error(self, exception):
        """Appier's JSON error answer in the API's shape (``result``,
        ``code``, ``message``: not Appier's ``name``, ``uid`` or
        ``session``), and a server error says no more than "Internal
        error": its text and class are for the log only.  The body is
        compact JSON, as every other error answer."""
        result = appier.APIApp.handle_error(self, exception)
        if not isinstance(result, dict):
            return result
        error = self._error(exception, result["code"], result["message"])
        self.request.set_code(error.status)
        # a 429 says when (the limiter's error), a 503 a second
        retry_after = getattr(exception, "retry_after", None) or error.retry_after
        if retry_after:
            self.request.set_header("Retry-After", str(retry_after))
        self.request.set_content_type("application/json")
        return http.json_bytes(error.body)

    def _error(self, exception, code, message):
        """The ``HttpError`` that answers ``exception`` (Appier's
        ``code`` and ``message`` for it)."""
        if stores.is_store_error(exception):
            # the store failing is no bug here: the client may retry
            return errors.HttpError(503, "Store unavailable")
        if not _is_client_error(exception):
            return errors.HttpError(500, "Internal error")
        if not isinstance(exception, errors.AnswerError):
            # Appier's file errors name the file, and a directory by its
            # full path: a file that cannot be served is a plain 404
            if self.request.path.startswith(_STATIC):
                return errors.HttpError(404, "Not found")
            if any(path in str(message) for path in _INSTALL_PATHS):
                message = "Request refused"
        return errors.HttpError(code, message)

    def log_error(self, exception, message=None):
        if _is_client_error(exception):
            return self.logger.debug("client error: %s", exception)
        if stores.is_store_error(exception):
            return logger.error("store failed: %s", exception)
        return appier.APIApp.log_error(self, exception, message)

    def log_warning(self, exception, message=None):
        if _is_client_error(exception):
            return self.logger.debug("client error: %s", exception)
        return appier.APIApp.log_warning(self, exception, message)


def _is_client_error(exception):
    code = getattr(exception, "code", None)
    return isinstance(exception, errors.AnswerError) or (
        isinstance(code, int) and 400 <= code < 500
    )
