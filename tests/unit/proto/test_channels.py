import pytest

from pushi.proto import channels, errors


@pytest.mark.parametrize(
    "name, kind",
    [
        ("global", channels.PUBLIC),
        ("private-a", channels.PRIVATE),
        ("private-encrypted-a", channels.ENCRYPTED),
        ("presence-a", channels.PRESENCE),
        ("personal-42", channels.PERSONAL),
        ("peer-room:1&2", channels.PEER),
        ("peer-review", channels.PUBLIC),
        ("#server-to-user-7", channels.USER),
        ("a-private-b", channels.PUBLIC),
        ("cache-a", channels.PUBLIC),
    ],
)
def test_kind_reads_the_prefix_only(name, kind):
    assert channels.kind(name) == kind


def test_grammar():
    assert channels.is_valid("A-z_0=9@,.;")
    assert channels.is_valid("a" * 164)
    assert not channels.is_valid("a" * 165)
    for bad in ("", "with space", "a/b", "a#b", "a:b", "a&b", "é", None, 5):
        assert not channels.is_valid(bad)
    assert channels.is_valid("#server-to-user-12")
    assert not channels.is_valid("#server-to-user-")
    assert channels.is_valid("peer-room:a&b")
    assert not channels.is_valid("peer-room:a")
    assert channels.is_valid("peer-review")


def test_check_raises_subscription_error():
    with pytest.raises(errors.SubscriptionError) as error:
        channels.check("bad name")
    assert error.value.status == 400


def test_cache_variants():
    for name in (
        "cache-a",
        "private-cache-a",
        "presence-cache-a",
        "private-encrypted-cache-a",
    ):
        assert channels.is_cache(name)
    assert not channels.is_cache("private-a")


def test_peer_names_are_sorted():
    assert channels.peer_name("room", "b", "a") == "peer-room:a&b"
    assert channels.peer_users("peer-room:a&b") == ("a", "b")
    assert channels.peer_users("room") is None
