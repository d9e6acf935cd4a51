"""The debug console in headless Chromium against the real server.

Playwright (the ``playwright`` package of requirements-dev.txt, as the
pushi.js browser tests use it) drives Debian's ``/usr/bin/chromium`` with a
fresh profile and never downloads a browser.  This module starts the real
server, signs in on ``/console``, makes traffic with real WebSocket and
HTTP clients, and reads what the page shows.  A screenshot of the console
with traffic is saved to ``artifacts/console.png``.

Without chromium or playwright the tests skip, unless CI is set, where
they fail (``scripts/install`` installs both).
"""

import json
import os
import time

import pytest

from support import ADMIN_SECRET, ROOT, PushiServer, chromium, wait_until

ARTIFACTS = os.path.join(ROOT, "artifacts")
TIMEOUT = 15000


class Page:
    """One Chromium page, driven by named steps: ``call(op, **args)``.

    Every wait has a timeout, so a missing entry fails instead of hanging.
    Errors the page's script raises are collected for the module's end.
    """

    def __init__(self, page):
        self.page = page
        self.errors = []
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("console", self._console)

    def _console(self, message):
        # a refused sign-in is a 401 the page handles; report the rest
        if message.type == "error" and not message.text.startswith(
            "Failed to load resource"
        ):
            self.errors.append(message.text)

    def call(self, op, **args):
        return getattr(self, "_" + op)(**args)

    def _goto(self, url):
        self.page.goto(url)

    def _fill(self, selector, value):
        self.page.fill(selector, value, timeout=TIMEOUT)

    def _click(self, selector):
        self.page.click(selector, timeout=TIMEOUT)

    def _check(self, selector, checked):
        self.page.set_checked(selector, checked, timeout=TIMEOUT)

    def _select(self, selector, value):
        self.page.select_option(selector, value, timeout=TIMEOUT)

    def _wait(self, selector, text=None, state="visible"):
        """Until an element matches the selector and holds the text."""
        locator = (
            self.page.locator(selector, has_text=text)
            if text
            else self.page.locator(selector)
        )
        locator.first.wait_for(state=state, timeout=TIMEOUT)

    def _waitText(self, selector, value):
        """Until an element's text is exactly the value."""
        self.page.wait_for_function(
            """([selector, value]) => {
                const element = document.querySelector(selector);
                return element !== null && element.textContent.trim() === value;
            }""",
            arg=[selector, value],
            timeout=TIMEOUT,
        )

    def _texts(self, selector):
        return self.page.eval_on_selector_all(
            selector,
            """elements => elements.map(element => ({
                text: element.textContent,
                visible: !!(element.offsetWidth || element.offsetHeight),
            }))""",
        )

    def _visible(self, selector):
        return self.page.is_visible(selector)

    def _evaluate(self, expression):
        return self.page.evaluate(expression)

    def _screenshot(self, path):
        self.page.screenshot(path=path, full_page=True)
        return path

    def rows(self):
        """The log's rows, newest first: ``{"text", "visible"}``."""
        return self.call("texts", selector="#log tr.entry")

    def wait_row(self, kind, text):
        """Waits for a shown log row of a type holding a text."""
        self.call("wait", selector='#log tr.entry[data-type="%s"]' % kind, text=text)


@pytest.fixture(scope="module")
def page():
    with chromium({"width": 1280, "height": 900}) as context:
        instance = Page(context.pages[0] if context.pages else context.new_page())
        yield instance
        assert instance.errors == []


@pytest.fixture(scope="module")
def server():
    """The real server, sampling its history every second (the charts)."""
    instance = PushiServer(env={"PUSHI_CONSOLE_HISTORY_EVERY": "1"}).start()
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def apps(server):
    """Two apps: the watched one and a stranger."""
    return server.create_app("shop", client_events=True), server.create_app("stranger")


def open_console(page, server):
    """The console page, signed out (its token is forgotten on a page of
    the same origin that runs no script, so no late answer stores it)."""
    page.call("goto", url=server.base_url + "static/console/console.css")
    page.call("evaluate", expression="sessionStorage.clear()")
    page.call("goto", url=server.base_url + "console")


def sign_in(page, server, app):
    open_console(page, server)
    page.call("fill", selector="#app-id", value=app["app_id"])
    page.call("fill", selector="#app-key", value=app["key"])
    page.call("fill", selector="#app-secret", value=app["secret"])
    page.call("click", selector="#signin-button")
    page.call("waitText", selector="#status", value="live")


def trigger(server, app, channel, event, data):
    server.client(app).trigger_event(
        channel=channel, data=data, event=event, persist=False
    )


def test_signed_out_shows_nothing(page, server, apps):
    open_console(page, server)
    assert page.call("visible", selector="#signin-app")
    assert not page.call("visible", selector="#console")
    assert not page.call("visible", selector="#signout")
    assert page.rows() == []
    # a wrong secret is refused and still shows nothing
    page.call("fill", selector="#app-id", value=apps[0]["app_id"])
    page.call("fill", selector="#app-key", value=apps[0]["key"])
    page.call("fill", selector="#app-secret", value="wrong")
    page.call("click", selector="#signin-button")
    page.call("wait", selector="#signin-error", text="refused")
    assert not page.call("visible", selector="#console")


def test_connection_subscription_and_rest_event_appear(page, server, apps):
    shop = apps[0]
    sign_in(page, server, shop)
    page.call("wait", selector="#app-name", text="shop")
    assert not page.call("visible", selector="#signin")
    client = server.connect(shop)
    client.subscribe("orders")
    page.wait_row("connection", client.socket_id)
    page.wait_row("subscribed", "orders")
    page.wait_row("occupied", "orders")
    page.call("waitText", selector="#count-connections", value="1")
    page.call("waitText", selector="#count-channels", value="1")
    trigger(server, shop, "orders", "order-created", '{"order":42}')
    client.recv_event("order-created")
    page.wait_row("api_message", "order-created")
    page.wait_row("api_message", '{"order":42}')
    page.call("waitText", selector="#count-messages", value="1")
    # newest on top
    assert "order-created" in page.rows()[0]["text"]
    client.close()
    page.wait_row("disconnection", client.socket_id)
    page.call("waitText", selector="#count-connections", value="0")


def test_event_creator_reaches_a_subscribed_client(page, server, apps):
    shop = apps[0]
    sign_in(page, server, shop)
    client = server.connect(shop)
    client.subscribe("orders")
    page.wait_row("subscribed", client.socket_id)
    page.call("fill", selector="#send-channel", value="orders")
    page.call("fill", selector="#send-event", value="from-console")
    page.call("fill", selector="#send-data", value='{"hello": "console"}')
    page.call("click", selector="#send-button")
    message = client.recv_event("from-console")
    assert message["channel"] == "orders"
    assert json.loads(message["data"]) == {"hello": "console"}
    page.call("wait", selector="#send-result", text="Sent from-console to orders")
    page.wait_row("api_message", "from-console")
    # text data is sent as typed; bad JSON is caught before sending
    page.call("select", selector="#send-format", value="text")
    page.call("fill", selector="#send-data", value="plain words")
    page.call("click", selector="#send-button")
    assert client.recv_event("from-console")["data"] == "plain words"
    page.call("select", selector="#send-format", value="json")
    page.call("fill", selector="#send-data", value="{not json")
    page.call("click", selector="#send-button")
    page.call("wait", selector="#send-result", text="not valid JSON")
    client.close()


def test_another_apps_traffic_never_appears(page, server, apps):
    shop, stranger = apps
    sign_in(page, server, shop)
    outsider = server.connect(stranger)
    outsider.subscribe("orders")
    trigger(server, stranger, "orders", "foreign-event", "foreign-marker")
    outsider.recv_event("foreign-event")
    outsider.close()
    # sent after all of the stranger's traffic: had any leaked, it would be
    # on the page before this one arrives
    trigger(server, shop, "orders", "after-the-stranger", "ours")
    page.wait_row("api_message", "after-the-stranger")
    text = " ".join(row["text"] for row in page.rows())
    assert "foreign" not in text and outsider.socket_id not in text
    assert page.call("evaluate", expression="window.pushiConsole.received()") == 1


def test_filters_pause_clear_and_cap(page, server, apps):
    shop = apps[0]
    sign_in(page, server, shop)
    client = server.connect(shop)
    client.subscribe("alpha")
    client.subscribe("beta")
    trigger(server, shop, "alpha", "first-event", "apples")
    trigger(server, shop, "beta", "second-event", "bananas")
    page.wait_row("api_message", "second-event")

    def shown():
        return [row["text"] for row in page.rows() if row["visible"]]

    # by type
    page.call("check", selector='#types input[value="api_message"]', checked=False)
    assert shown() and not any("first-event" in text for text in shown())
    page.call("check", selector='#types input[value="api_message"]', checked=True)
    # by channel
    page.call("fill", selector="#filter-channel", value="beta")
    assert shown() and all("beta" in text for text in shown())
    page.call("fill", selector="#filter-channel", value="")
    # free text over event name and data
    page.call("fill", selector="#filter-text", value="apples")
    assert len(shown()) == 1 and "first-event" in shown()[0]
    page.call("fill", selector="#filter-text", value="second-EVENT")
    assert len(shown()) == 1 and "bananas" in shown()[0]
    page.call("fill", selector="#filter-text", value="")
    # pause holds new entries, resume shows them
    page.call("click", selector="#pause")
    page.call("waitText", selector="#status", value="paused")
    trigger(server, shop, "alpha", "while-paused", "held back")
    page.call("waitText", selector="#held", value="1 held while paused")
    assert not any("while-paused" in text for text in shown())
    page.call("click", selector="#pause")
    page.wait_row("api_message", "while-paused")
    # clear
    page.call("click", selector="#clear")
    assert page.rows() == []
    # cap
    page.call("fill", selector="#cap", value="3")
    page.call(
        "evaluate",
        expression="document.getElementById('cap').dispatchEvent(new Event('change'))",
    )
    for number in range(6):
        trigger(server, shop, "alpha", "capped-%d" % number, "n")
    page.wait_row("api_message", "capped-5")
    texts = [row["text"] for row in page.rows()]
    assert len(texts) == 3
    assert "capped-5" in texts[0] and "capped-3" in texts[2]
    client.close()


def test_admin_sign_in_picks_an_app(page, server, apps):
    shop = apps[0]
    open_console(page, server)
    page.call("fill", selector="#admin-secret", value=ADMIN_SECRET)
    page.call("click", selector="#admin-load")
    page.call("wait", selector="#admin-app option", text="shop", state="attached")
    page.call("select", selector="#admin-app", value=shop["app_id"])
    page.call("click", selector="#admin-watch")
    page.call("waitText", selector="#status", value="live")
    page.call("wait", selector="#app-name", text="shop")
    assert (
        page.call(
            "evaluate", expression="document.getElementById('admin-secret').value"
        )
        == ""
    )
    assert (
        "admin"
        not in page.call(
            "evaluate", expression="JSON.stringify(sessionStorage)"
        ).lower()
    )
    trigger(server, shop, "orders", "seen-by-admin", "x")
    page.wait_row("api_message", "seen-by-admin")
    # signing out closes the stream, hides everything and ends the token
    token = json.loads(
        page.call("evaluate", expression="sessionStorage.getItem('pushi.console')")
    )["token"]
    headers = {"Authorization": "Bearer " + token}
    assert server.request("GET", "apps/" + shop["app_id"], headers=headers)[0] == 200
    page.call("click", selector="#signout")
    assert not page.call("visible", selector="#console")
    assert page.rows() == []
    wait_until(
        lambda: (
            server.request("GET", "apps/" + shop["app_id"], headers=headers)[0] == 401
        ),
        message="the token outlived the sign-out",
    )


def test_admin_creates_an_app_configures_it_and_sees_its_first_event(
    page, server, apps
):
    """The newcomer's path, all in the page: the admin secret, a new app,
    its settings, a webhook tested, a key added and one revoked, then its
    first event through the event creator."""
    from support import Receiver

    admin = {"Authorization": "Bearer " + ADMIN_SECRET}
    receiver = Receiver()
    try:
        open_console(page, server)
        page.call("fill", selector="#admin-secret", value=ADMIN_SECRET)
        page.call("click", selector="#admin-load")
        page.call("wait", selector="#apps-list tr", text="shop")
        assert page.call("visible", selector="#admin")
        # create: the secret is shown once
        page.call("fill", selector="#create-name", value="newcomer")
        page.call("click", selector="#create-button")
        page.call("wait", selector="#admin-result", text="Created newcomer")
        app_id = page.call("texts", selector="#created-id")[0]["text"]
        first_key = page.call("texts", selector="#created-key")[0]["text"]
        status, record = server.request("GET", "apps/" + app_id, headers=admin)
        assert status == 200 and record["name"] == "newcomer"
        assert record["key"] == first_key
        secret = page.call("texts", selector="#created-secret")[0]["text"]
        assert len(secret) >= 32 and "secret" not in record
        row = '#apps-list tr[data-app-id="%s"]' % app_id
        page.call("wait", selector=row, text="newcomer")
        # settings: client events on, a limit changed, a webhook tested
        page.call("click", selector=row + ' button[data-action="manage"]')
        page.call("wait", selector="#manage-name", text="newcomer")
        page.call("check", selector="#set-client-events", checked=True)
        page.call("fill", selector="#limit-max_event_data", value="2048")
        page.call("click", selector="#add-hook")
        page.call("fill", selector="#set-hooks .hook-url", value=receiver.url)
        page.call("click", selector='#set-hooks button[data-action="test"]')
        page.call(
            "wait", selector="#set-hooks .hook-result", text="Test sent: HTTP 200"
        )
        headers, body = receiver.posts.get(timeout=10)
        assert json.loads(body)["events"] == [{"name": "pushi_test"}]
        assert headers["X-Pusher-Key"] == first_key
        page.call("click", selector="#save-settings")
        page.call("wait", selector="#settings-result", text="Saved")
        status, record = server.request("GET", "apps/" + app_id, headers=admin)
        assert record["client_events"] is True
        assert record["settings"]["max_event_data"] == 2048
        assert record["settings"]["webhooks"] == [{"url": receiver.url}]
        # keys: add one (its secret shown once), revoke the first
        page.call("wait", selector="#keys-list tr", text=first_key)
        page.call("click", selector="#add-key")
        page.call("wait", selector="#keys-result", text="Added")
        new_key = page.call("texts", selector="#new-key-key")[0]["text"]
        assert len(page.call("texts", selector="#new-key-secret")[0]["text"]) >= 32
        page.call("wait", selector="#keys-list tr", text=new_key)
        page.call(
            "click",
            selector='#keys-list tr[data-key="%s"] button[data-action="revoke"]'
            % first_key,
        )
        page.call("wait", selector="#keys-result", text="Revoked " + first_key)
        status, answer = server.request("GET", "apps/%s/keys" % app_id, headers=admin)
        assert [pair["key"] for pair in answer["keys"]] == [new_key]
        # disable, enable
        page.call("click", selector=row + ' button[data-action="toggle"]')
        page.call("wait", selector=row, text="disabled")
        assert (
            server.request("GET", "apps/" + app_id, headers=admin)[1]["enabled"]
            is False
        )
        page.call("click", selector=row + ' button[data-action="toggle"]')
        page.call("wait", selector=row, text="enabled")
        # watch it, and its first event, sent from the page
        page.call("click", selector=row + ' button[data-action="watch"]')
        page.call("waitText", selector="#status", value="live")
        page.call("wait", selector="#app-name", text="newcomer")
        page.call("fill", selector="#send-channel", value="welcome")
        page.call("fill", selector="#send-event", value="first-event")
        page.call("fill", selector="#send-data", value='{"hello": "newcomer"}')
        page.call("click", selector="#send-button")
        page.wait_row("api_message", "first-event")
        assert (
            "admin"
            not in page.call(
                "evaluate", expression="JSON.stringify(sessionStorage)"
            ).lower()
        )
        os.makedirs(ARTIFACTS, exist_ok=True)
        page.call("screenshot", path=os.path.join(ARTIFACTS, "console-admin.png"))
        page.call("click", selector="#signout")
        page.call("click", selector="#admin-forget")
        assert not page.call("visible", selector="#admin")
    finally:
        receiver.close()


def chart_points(page, chart, series):
    """The ``[x, y]`` points of one series of a chart's SVG."""
    points = page.call(
        "evaluate",
        expression="document.querySelector('#%s polyline[data-series=\"%s\"]')"
        ".getAttribute('points')" % (chart, series),
    )
    return [[float(value) for value in pair.split(",")] for pair in points.split()]


def test_charts_draw_the_history_and_grow_live(page, server, apps):
    shop = apps[0]
    client = server.connect(shop)
    client.subscribe("charted")
    for number in range(5):
        trigger(server, shop, "charted", "chart-%d" % number, "x")
    client.recv_event("chart-4")
    # signed in after the traffic: the history shows it
    time.sleep(1.5)
    sign_in(page, server, shop)
    page.page.wait_for_function(
        "() => document.querySelector('#chart-messages')"
        ".getAttribute('data-points') > 0",
        timeout=TIMEOUT,
    )
    baseline = 170 - 22  # the chart's y of zero
    published = chart_points(page, "chart-messages", "published")
    assert any(y < baseline for _x, y in published), published
    assert any(
        y < baseline for _x, y in chart_points(page, "chart-connections", "connections")
    )
    # console:stats brings new samples: the line grows while the page is open
    count = len(published)
    page.page.wait_for_function(
        "() => document.querySelector('#chart-connections polyline')"
        ".getAttribute('points').split(' ').length > %d" % (count + 1),
        timeout=TIMEOUT,
    )
    client.close()


def test_screenshot_with_traffic(page, server, apps):
    from pushi.proto import auth

    shop = apps[0]
    sign_in(page, server, shop)
    buyer = server.connect(shop)
    buyer.subscribe("orders")
    member = server.connect(shop, "pushi")
    channel_data = json.dumps({"user_id": "ann", "user_info": {"name": "Ann"}})
    signature = auth.channel_auth(
        shop["key"], shop["secret"], member.socket_id, "presence-support", channel_data
    )
    member.subscribe("presence-support", signature, channel_data)
    signature = auth.channel_auth(
        shop["key"], shop["secret"], buyer.socket_id, "private-cart"
    )
    buyer.subscribe("private-cart", signature)
    buyer.send(
        {"event": "client-typing", "channel": "private-cart", "data": {"typing": True}}
    )
    trigger(server, shop, "orders", "order-created", '{"order":42,"total":"19.90"}')
    page.call("fill", selector="#send-channel", value="orders")
    page.call("fill", selector="#send-event", value="order-shipped")
    page.call("fill", selector="#send-data", value='{"order": 42, "carrier": "post"}')
    page.call("click", selector="#send-button")
    buyer.recv_event("order-shipped")
    member.close()
    page.wait_row("member_removed", "ann")
    page.wait_row("client_event", "client-typing")
    page.wait_row("api_message", "order-shipped")
    os.makedirs(ARTIFACTS, exist_ok=True)
    path = os.path.join(ARTIFACTS, "console.png")
    page.call("screenshot", path=path)
    assert os.path.getsize(path) > 10000
    buyer.close()
