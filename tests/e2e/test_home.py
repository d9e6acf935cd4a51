"""The landing page of the REST port (``GET /``): it was a 404 JSON body
to a newcomer who opened the server in a browser."""

import html.parser
import urllib.request

import pytest

import pushi

from support import ADMIN_SECRET, PushiServer


class Links(html.parser.HTMLParser):
    """The ``href`` of every link, and the tags met."""

    def __init__(self):
        html.parser.HTMLParser.__init__(self)
        self.links, self.tags = [], set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        if tag == "a":
            self.links.append(dict(attrs)["href"])


def get(url):
    with urllib.request.urlopen(url, timeout=15) as answer:
        return answer.status, answer.headers, answer.read().decode("utf-8")


@pytest.mark.parametrize("admin_secret", [ADMIN_SECRET, ""])
def test_the_landing_page_links_the_console_the_example_and_names_the_docs(
    admin_secret,
):
    instance = PushiServer(env={"PUSHI_ADMIN_SECRET": admin_secret}).start()
    try:
        status, headers, page = get(instance.base_url)
        assert status == 200
        assert headers["Content-Type"].startswith("text/html")
        parser = Links()
        parser.feed(page)
        for link in ("/console", "/static/example.html", "/health"):
            assert link in parser.links, page
            assert get(instance.base_url + link.lstrip("/"))[0] == 200, link
        assert "README.md" in page and "docs/" in page, page
        assert "Pushi %s" % pushi.__version__ in page, page
        if admin_secret:
            assert "Admin secret: set" in page, page
        else:
            assert "Admin secret: not set" in page, page
        assert ADMIN_SECRET not in page
        # the console's strict policy holds: no script at all, no inline code
        assert "script" not in parser.tags and "style" not in parser.tags, page
        policy = headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy and "unsafe-inline" not in policy
    finally:
        instance.stop()
