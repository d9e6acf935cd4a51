"""Whether a WebSocket may join an app (``Access.admit_socket``): the
policy the WebSocket server asks about, with no socket.  The end-to-end
tests (test_e2e_access, test_e2e_rates, test_e2e_capacity) check the same
codes over real sockets."""

from pushi.base.access import Access
from pushi.base.limits import App
from pushi.proto import errors


def app(**settings):
    return App(
        {
            "app_id": 1,
            "key": "k",
            "secret": "s",
            "enabled": settings.pop("enabled", True),
            "settings": settings,
        }
    )


def admit(subject, key="k", origin=None, open_sockets=0, access=None):
    access = access or Access(apps=None)
    return access.admit_socket(subject, key, origin, lambda _app_id: open_sockets)


def code(refusal):
    return refusal and refusal[0]


def test_an_enabled_app_admits_its_keys():
    assert admit(app()) is None


def test_an_unknown_key_or_app_is_4001():
    assert code(admit(None)) == errors.UNKNOWN_APP
    assert code(admit(app(), key="other")) == errors.UNKNOWN_APP


def test_a_disabled_app_is_4003():
    assert code(admit(app(enabled=False))) == errors.APP_DISABLED


def test_an_origin_not_allowed_is_4009():
    subject = app(allowed_origins=["https://a.example"])
    assert admit(subject, origin="https://a.example") is None
    assert code(admit(subject, origin="https://b.example")) == errors.UNAUTHORIZED
    assert code(admit(subject, origin=None)) == errors.UNAUTHORIZED


def test_an_app_at_its_connection_quota_is_4004():
    subject = app(max_connections=2)
    assert admit(subject, open_sockets=1) is None
    assert code(admit(subject, open_sockets=2)) == errors.OVER_QUOTA


def test_connections_past_the_rate_are_4100_and_refusals_are_not_counted():
    access = Access(apps=None)
    subject = app(max_connections_per_second=2, max_connections=5)
    # refused for its quota first: not counted against the rate
    assert code(admit(subject, open_sockets=5, access=access)) == errors.OVER_QUOTA
    assert admit(subject, access=access) is None
    assert admit(subject, access=access) is None
    refusal = admit(subject, access=access)
    assert code(refusal) == errors.OVER_CONNECTION_RATE
    assert "max_connections_per_second" in refusal[1]
