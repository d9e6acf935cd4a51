"""The pusher PyPI SDK and pysher against the real server.

Both are the unmodified packages from PyPI (``requirements-dev.txt``),
configured as docs/from-pusher.md says; raw
WebSocket clients (``support.Client``) watch what the server sends.
"""

import json
import logging
import queue

import pusher
import pusher.errors
import pysher
import pytest

from interop_support import python_sdk


def sdk_for(server, app, secret=None):
    return python_sdk(server, app, secret=secret or app["secret"])


@pytest.fixture
def sdk(server, app):
    return sdk_for(server, app)


def subscribed(client, channel, token=None, channel_data=None):
    answer = client.subscribe(channel, auth=token, channel_data=channel_data)
    assert answer["event"] == "pusher_internal:subscription_succeeded", answer
    return answer


class TestPusherSdk:
    def test_trigger_single_and_multi_channel(self, server, app, sdk):
        one, two = server.connect(app), server.connect(app)
        subscribed(one, "alpha")
        subscribed(two, "beta")
        assert sdk.trigger("alpha", "single", {"n": 1}) == {}
        assert sdk.trigger(["alpha", "beta"], "multi", "both") == {}
        assert json.loads(one.recv_event("single")["data"]) == {"n": 1}
        assert one.recv_event("multi")["data"] == "both"
        assert two.recv_event("multi")["data"] == "both"
        one.close()
        two.close()

    def test_socket_id_exclusion(self, server, app, sdk):
        sender, other = server.connect(app), server.connect(app)
        for client in (sender, other):
            subscribed(client, "room")
        sdk.trigger("room", "said", "hi", socket_id=sender.socket_id)
        sdk.trigger("room", "after", "x")
        assert other.recv_event("said")["data"] == "hi"
        # the next event is the first the excluded socket gets
        assert sender.recv()["event"] == "after"
        sender.close()
        other.close()

    def test_batch(self, server, app, sdk):
        client = server.connect(app)
        subscribed(client, "feed")
        batch = [
            {"channel": "feed", "name": "one", "data": {"n": 1}},
            {"channel": "feed", "name": "two", "data": "2"},
        ]
        assert sdk.trigger_batch(batch) == {}
        assert json.loads(client.recv_event("one")["data"]) == {"n": 1}
        assert client.recv_event("two")["data"] == "2"
        client.close()

    def test_queries_and_users(self, server, app, sdk):
        member = server.connect(app)
        data = {"user_id": "42", "user_info": {"name": "Zed"}}
        token = sdk.authenticate(
            channel="presence-team", socket_id=member.socket_id, custom_data=data
        )
        assert json.loads(token["channel_data"]) == data
        subscribed(member, "presence-team", token["auth"], token["channel_data"])
        subscribed(member, "open")
        assert sdk.channels_info() == {"channels": {"presence-team": {}, "open": {}}}
        assert sdk.channels_info("presence-", ["user_count"]) == {
            "channels": {"presence-team": {"user_count": 1}}
        }
        assert sdk.channel_info("presence-team", ["user_count"]) == {
            "occupied": True,
            "user_count": 1,
        }
        # presence channels count users, not subscriptions (Pusher): 400
        with pytest.raises(pusher.errors.PusherBadRequest):
            sdk.channel_info("presence-team", ["user_count", "subscription_count"])
        assert sdk.channel_info("open", ["subscription_count"]) == {
            "occupied": True,
            "subscription_count": 1,
        }
        assert sdk.channel_info("empty") == {"occupied": False}
        assert sdk.users_info("presence-team") == {"users": [{"id": "42"}]}
        member.close()

    def test_send_to_user_and_terminate(self, server, app, sdk):
        client = server.connect(app)
        signed = sdk.authenticate_user(client.socket_id, {"id": "py-user"})
        assert json.loads(signed["user_data"]) == {"id": "py-user"}
        client.send(
            {
                "event": "pusher:signin",
                "data": {"auth": signed["auth"], "user_data": signed["user_data"]},
            }
        )
        assert client.recv_event("pusher:signin_success")
        subscribed(client, "#server-to-user-py-user")
        assert sdk.send_to_user("py-user", "note", {"to": "you"}) == {}
        assert json.loads(client.recv_event("note")["data"]) == {"to": "you"}
        assert sdk.terminate_user_connections("py-user") == {}
        error = client.recv_event("pusher:error")
        assert error["data"]["code"] == 4009

    @pytest.mark.one_server
    def test_errors(self, server, app, sdk):
        with pytest.raises(pusher.errors.PusherBadAuth):
            sdk_for(server, app, secret="wrong").trigger("c", "e", "x")
        with pytest.raises(pusher.errors.PusherBadStatus) as too_big:
            sdk.trigger("c", "e", "x" * 20000)
        assert str(too_big.value).startswith("413")
        with pytest.raises(pusher.errors.PusherBadRequest):
            sdk.channels_info(attributes=["user_count"])
        unknown = dict(app, app_id="999999")
        with pytest.raises(pusher.errors.PusherBadStatus) as missing:
            sdk_for(server, unknown).trigger("c", "e", "x")
        assert str(missing.value).startswith("404")
        server.update_app(app, enabled=False)
        with pytest.raises(pusher.errors.PusherForbidden):
            sdk.trigger("c", "e", "x")


class Pysher:
    """A pysher client whose channel events land in one queue.

    It subscribes from its ``connection_established`` handler, as pysher's
    README does: pysher registers a channel only after sending the
    subscription, so a subscription made from another thread can miss its
    own ``subscription_succeeded``.
    """

    def __init__(self, server, app, channels, user_data=None):
        self.events = queue.Queue()
        self.channels = channels
        self.client = pysher.Pusher(
            app["key"],
            custom_host="127.0.0.1",
            port=server.next_ws_port(app),
            secure=False,
            secret=app["secret"],
            user_data=user_data,
            log_level=logging.WARNING,
        )
        self.client.connection.bind("pusher:connection_established", self._subscribe)
        self.client.connect()

    def _subscribe(self, _data):
        for channel, events in self.channels.items():
            subscription = self.client.subscribe(channel)
            for name in ("pusher_internal:subscription_succeeded",) + tuple(events):
                subscription.bind(
                    name,
                    lambda data, channel=channel, name=name: self.events.put(
                        (channel, name, data)
                    ),
                )

    def subscribed(self):
        """The subscription data of every channel, once all succeeded."""
        states = {}
        while len(states) < len(self.channels):
            channel, name, data = self.next()
            assert name == "pusher_internal:subscription_succeeded", (
                channel,
                name,
                data,
            )
            states[channel] = json.loads(data)
        return states

    def next(self):
        return self.events.get(timeout=10)

    def close(self):
        # pysher joins its socket thread, which websocket-client can keep
        # in a select() for its 100 s ping_timeout after the close: bounded
        self.client.disconnect(timeout=5)


class TestPysher:
    def test_public_private_and_presence(self, server, app, sdk):
        channels = {
            "lobby": ["news"],
            "private-desk": ["news"],
            "presence-floor": ["news"],
        }
        client = Pysher(
            server, app, channels, user_data={"user_id": "5", "user_info": {"n": 5}}
        )
        try:
            states = client.subscribed()
            # each with its position only (Pushi's recovery)
            assert set(states["lobby"]) == {"epoch", "offset"}
            assert set(states["private-desk"]) == {"epoch", "offset"}
            assert states["presence-floor"]["presence"] == {
                "ids": ["5"],
                "hash": {"5": {"n": 5}},
                "count": 1,
            }
            for channel in channels:
                sdk.trigger(channel, "news", {"on": channel})
                got_channel, name, data = client.next()
                assert (got_channel, name) == (channel, "news")
                assert json.loads(data) == {"on": channel}
            assert sdk.users_info("presence-floor") == {"users": [{"id": "5"}]}
        finally:
            client.close()

    def test_presence_members_and_client_events_with_a_raw_socket(
        self, server, app, sdk
    ):
        channels = {"presence-hall": ["client-wave", "pusher_internal:member_added"]}
        client = Pysher(
            server, app, channels, user_data={"user_id": "p", "user_info": {}}
        )
        raw = server.connect(app)
        try:
            client.subscribed()
            token = sdk.authenticate(
                channel="presence-hall",
                socket_id=raw.socket_id,
                custom_data={"user_id": "raw", "user_info": {"r": 1}},
            )
            answer = subscribed(
                raw, "presence-hall", token["auth"], token["channel_data"]
            )
            assert sorted(json.loads(answer["data"])["presence"]["ids"]) == ["p", "raw"]
            channel, name, member = client.next()
            assert name == "pusher_internal:member_added"
            assert json.loads(member) == {"user_id": "raw", "user_info": {"r": 1}}
            raw.send(
                {"event": "client-wave", "channel": "presence-hall", "data": {"hi": 1}}
            )
            channel, name, waved = client.next()
            assert (channel, name) == ("presence-hall", "client-wave")
            assert waved == {"hi": 1}
            client.client.channel("presence-hall").trigger("client-wave", {"back": 1})
            wave = raw.recv_event("client-wave")
            assert wave["data"] == {"back": 1} and wave["user_id"] == "p"
        finally:
            client.close()
            raw.close()
