import json
import os

import pytest

from pushi.proto import errors, messages


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[1]",
        '"x"',
        "{}",
        '{"event": 5}',
        '{"event": ""}',
        '{"event":"a","channel":3}',
    ],
)
def test_bad_messages_are_4300(text):
    with pytest.raises(errors.ProtocolError) as error:
        messages.parse(text)
    assert error.value.code == errors.INVALID_MESSAGE
    assert not error.value.closes


def test_long_event_name_is_refused():
    with pytest.raises(errors.ProtocolError):
        messages.parse(json.dumps({"event": "x" * 201}))


def test_deeply_nested_json_is_refused_not_crashing():
    with pytest.raises(errors.ProtocolError):
        messages.parse('{"event":"a","data":' + "[" * 100000 + "]" * 100000 + "}")


def test_nesting_is_bounded_where_json_is_parsed():
    """Depths the parser takes but later encodings could not (a size
    check, a delivery) are refused here; brackets inside strings do not
    count."""
    within = "[" * messages.MAX_DEPTH + "]" * messages.MAX_DEPTH
    assert messages.loads(within)
    assert messages.loads(json.dumps({"a": "[" * 5000}))
    for depth in (messages.MAX_DEPTH + 1, 976):
        text = '{"event":"a","data":' + "[" * depth + "]" * depth + "}"
        with pytest.raises(messages.TooDeep):
            messages.loads(text)
        with pytest.raises(errors.ProtocolError) as error:
            messages.parse(text)
        assert error.value.code == errors.INVALID_MESSAGE


def test_protocol_event_data_given_as_string_is_decoded():
    message = messages.parse(
        '{"event":"pusher:subscribe","data":"{\\"channel\\":\\"a\\"}"}'
    )
    assert message["data"] == {"channel": "a"}


def test_connection_established_data_is_a_json_string():
    message = json.loads(messages.connection_established("1.2", 120))
    assert json.loads(message["data"]) == {"socket_id": "1.2", "activity_timeout": 120}


@pytest.mark.parametrize("socket_id", ["1.2", "123456.7890", 'a"b\\c', "é.☃"])
def test_connection_established_is_the_compact_json_of_its_fields(socket_id):
    """The text is exactly the compact ``dumps`` of the message's dicts."""
    data = messages.dumps({"socket_id": socket_id, "activity_timeout": 30})
    assert messages.connection_established(socket_id, 30) == messages.dumps(
        {"event": "pusher:connection_established", "data": data}
    )


def test_member_events_per_dialect():
    pusher = json.loads(
        messages.member_added("presence-a", "1", {"n": 1}, messages.PUSHER)
    )
    assert pusher["event"] == "pusher_internal:member_added"
    assert json.loads(pusher["data"]) == {"user_id": "1", "user_info": {"n": 1}}
    pushi = json.loads(messages.member_removed("presence-a", "1", messages.PUSHI))
    assert pushi["event"] == "pusher:member_removed"
    assert json.loads(pushi["member"]) == {"user_id": "1"}


def test_error_codes_and_closing():
    assert errors.ProtocolError(4001, "x").closes
    assert not errors.ProtocolError(4301, "x").closes
    assert json.loads(messages.error(4301, "slow"))["data"] == {
        "code": 4301,
        "message": "slow",
    }


def test_event_extra_fields_skip_none():
    message = json.loads(messages.event("e", "c", "d", user_id=None, mid="m"))
    assert message == {"event": "e", "channel": "c", "data": "d", "mid": "m"}


def test_message_ids_are_unique_and_grow_with_time():
    ids = [messages.message_id(1000.0 + index / 1000) for index in range(100)]
    assert len(set(ids)) == 100 and ids == sorted(ids)
    assert all(len(mid) == 28 and int(mid, 16) >= 0 for mid in ids)


def test_message_ids_of_a_forked_child_are_not_its_parents():
    # the random bits come from a buffer: a child must not inherit it
    messages.message_id(1.0)
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(writer, " ".join(messages.message_id(1.0) for _ in range(8)).encode())
        os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as pipe:
        child = set(pipe.read().split())
    os.waitpid(pid, 0)
    parent = {messages.message_id(1.0) for _ in range(8)}
    assert len(child) == 8 and not child & parent


@pytest.mark.parametrize(
    "text",
    [
        '"\\ud800"',
        '{"a":["x\\udfff"]}',
        '{"\\udc00":1}',
        "NaN",
        "[-Infinity]",
        "1e400",
        pytest.param("[" * 100000 + "]" * 100000, id="deep"),
        b'"\xed\xa0\x80"',
        b'"\xff"',
    ],
)
def test_loads_refuses_what_json_cannot_carry(text):
    with pytest.raises(ValueError):
        messages.loads(text)


def test_loads_takes_surrogate_pairs_and_escaped_backslashes():
    assert messages.loads('"\\ud83d\\ude00"') == "\U0001f600"
    assert messages.loads('"\\\\ud800"') == "\\ud800"
    assert messages.loads(b'{"a":1.5e3}') == {"a": 1500.0}
