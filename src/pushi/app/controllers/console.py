"""The debug console page (``GET /console``).

The page is static HTML, CSS and JavaScript under ``static/console/``; this
route serves its HTML with the WebSocket port and scheme filled in, so the
page can open its stream on the WebSocket server (``/console`` there, see
``pushi.base.console``), or with ``PUSHI_PUBLIC_WS_URL`` when browsers reach
that server elsewhere (behind a proxy, on the page's own origin).  Nothing
secret is in the page: the visitor signs in on it with ``POST /login``.
"""

import html
import os

import appier

from .common import PushiController

PAGE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "static",
    "console",
    "index.html",
)


def content_security(config):
    """The console page's Content-Security-Policy: its own script and
    style files only, no inline code, its requests to this origin and its
    stream to the WebSocket port (or the public WebSocket URL), and no
    framing."""
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; "
        "img-src 'self'; connect-src 'self' %s; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'" % _stream_source(config)
    )


def _stream_source(config):
    if config.public_ws_url:
        return config.public_ws_url + "/console"
    return "%s://*:%d" % ("wss" if config.server_ssl else "ws", int(config.server_port))


class ConsoleController(PushiController):
    @appier.route("/console", "GET")
    def console(self):
        config = self.state.config
        with open(PAGE, encoding="utf-8") as file:
            page = file.read()
        page = page.replace("{{ws_port}}", str(int(config.server_port)))
        page = page.replace("{{ws_scheme}}", "wss" if config.server_ssl else "ws")
        page = page.replace("{{ws_url}}", html.escape(config.public_ws_url or ""))
        self.request.set_header("Cache-Control", "no-store")
        self.request.set_header("X-Frame-Options", "DENY")
        self.request.set_header("Content-Security-Policy", content_security(config))
        return self.html(page, content_type="text/html; charset=utf-8")
