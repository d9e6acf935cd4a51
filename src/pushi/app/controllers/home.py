"""The landing page (``GET /``): what this server is and where to go next.

A newcomer who opens the REST port in a browser met a 404.  The page links
the debug console, the example page and the health check, names the docs,
and says the server's version and whether the admin secret is set (never
the secret).  Static HTML with no script, under as strict a
Content-Security-Policy as the console's.
"""

import html

import appier

import pushi

from .common import PushiController

CONTENT_SECURITY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none';"
    " form-action 'none'; frame-ancestors 'none'"
)

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Pushi {version}</title>
<link rel="stylesheet" href="/static/console/console.css">
</head>
<body>
<header class="bar">
  <h1>Pushi <span>{version}</span></h1>
</header>
<main>
<section class="card">
  <h2>A self-hosted real-time push server</h2>
  <p>Pusher protocol 7 and the Pushi dialect on the WebSocket port
  ({ws_scheme}, port {ws_port}); the REST API on this port.</p>
  <ul>
    <li><a href="/console">Debug console</a>: sign in with an app's id, key
    and secret (or the admin secret) and watch its channels live.</li>
    <li><a href="/static/example.html">Example page</a>: pushi.js in a page;
    add <code>?key=APP_KEY&amp;connect=1</code> to its address to connect
    and subscribe.</li>
    <li><a href="/health">Health</a>: connections, channels and apps, as
    JSON.</li>
    <li>Docs: <code>README.md</code> and the <code>docs/</code> folder of
    the Pushi source (this server does not serve them, nor know where the
    source is hosted).</li>
  </ul>
</section>
<section class="card">
  <h2>This server</h2>
  <ul>
    <li>Version: {version}</li>
    <li>Admin secret: {admin}</li>
    <li>Apps: create one with <code>pushi app create NAME</code>{rest}.</li>
  </ul>
</section>
</main>
</body>
</html>
"""


class HomeController(PushiController):
    @appier.route("/", "GET")
    def home(self):
        config = self.state.config
        admin = bool(config.admin_secret)
        page = PAGE.format(
            version=html.escape(pushi.__version__),
            ws_scheme="wss" if config.server_ssl else "ws",
            ws_port=int(config.server_port),
            admin=(
                "set (apps can be managed over REST)"
                if admin
                else "not set (PUSHI_ADMIN_SECRET: app management over REST is off)"
            ),
            rest=" or <code>POST /apps</code> with the admin secret" if admin else "",
        )
        self.request.set_header("Cache-Control", "no-store")
        self.request.set_header("X-Frame-Options", "DENY")
        self.request.set_header("Content-Security-Policy", CONTENT_SECURITY)
        return self.html(page, content_type="text/html; charset=utf-8")
