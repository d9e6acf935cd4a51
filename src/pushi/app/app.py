"""The Appier app: the REST API, the admin routes and the pages.

Controllers live in ``controllers/`` (one resource per file) and reach the
engine only through the ``State`` (``publish``, ``call_in_loop``).  The two
publish routes are answered by ``publish.Publisher`` before Appier's
pipeline; everything else is an ordinary Appier route.
"""

import logging

import appier

from pushi.proto import errors

from .publish import ROUTE, Publisher

AUTHORIZATION = "pushi.authorization"
""" Where the Authorization header waits in the WSGI environ """


class PushiApp(appier.APIApp):
    """REST side of one Pushi process, bound to its ``State``."""

    def __init__(self, state, *args, **kwargs):
        self.state = state
        self.access = state.access
        self.publisher = Publisher(state, self.access, self)
        # service=False: none of Appier's own routes (/info, /versions,
        # /log, /debug, /login, /logout): no open admin endpoint, and /login
        # is Pushi's
        appier.APIApp.__init__(
            self,
            name="pushi",
            service=False,
            session_c=appier.MemorySession,
            *args,
            **kwargs
        )
        # Appier logs each failing request with its traceback; a 4xx is a
        # client's mistake, answered in JSON, not a server problem
        self.logger.setLevel(max(self.logger.level, logging.INFO))

    def application(self, environ, start_response):
        if environ.get("REQUEST_METHOD") == "POST":
            match = ROUTE.match(environ.get("PATH_INFO", ""))
            if match is not None:
                return self.publisher(environ, start_response, match)
        # Appier reads Authorization as HTTP Basic and fails on a Bearer
        # token: the header is kept aside for Pushi's own checks
        environ[AUTHORIZATION] = environ.pop("HTTP_AUTHORIZATION", None)
        return appier.APIApp.application(self, environ, start_response)

    def serve_netius(
        self, host, port, ipv6=False, ssl=False, key_file=None, cer_file=None, **kwargs
    ):
        # Appier's serve(conf=False) passes the certificate path as ipv6:
        # the address family follows the host instead
        return appier.APIApp.serve_netius(
            self,
            host,
            port,
            ipv6=":" in host,
            ssl=ssl,
            key_file=key_file,
            cer_file=cer_file,
            **kwargs
        )

    def log_error(self, exception, message=None):
        if _is_client_error(exception):
            return self.logger.debug("client error: %s", exception)
        return appier.APIApp.log_error(self, exception, message)

    def log_warning(self, exception, message=None):
        if _is_client_error(exception):
            return self.logger.debug("client error: %s", exception)
        return appier.APIApp.log_warning(self, exception, message)


def _is_client_error(exception):
    code = getattr(exception, "code", None)
    return isinstance(exception, errors.PushiError) or (
        isinstance(code, int) and 400 <= code < 500
    )
