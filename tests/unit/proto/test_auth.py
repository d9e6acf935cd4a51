"""Signatures: the test vectors of Pusher's documentation (channel
authorization, user authentication, the HTTP API)."""

import pytest

from pushi.proto import auth, errors

KEY = "278d425bdf160c739803"
SECRET = "7ad3773142a6692b25b8"


def test_private_channel_vector():
    assert auth.channel_auth(KEY, SECRET, "1234.1234", "private-foobar") == (
        KEY + ":58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
    )


def test_user_signin_vector():
    string = auth.user_string("1234.1234", '{"id":"12345"}')
    assert auth.sign(SECRET, string) == (
        "4708d583dada6a56435fb8bc611c77c359a31eebde13337c16ab43aa6de336ba"
    )


def test_presence_vector_signs_the_exact_channel_data():
    data = '{"user_id":10,"user_info":{"name":"Mr. Channels"}}'
    assert auth.channel_auth(KEY, SECRET, "1234.1234", "presence-foobar", data) == (
        KEY + ":31935e7d86dba64c2a90aed31fdc61869f9b22ba9d8863bba239c03ca481bc80"
    )


def test_verify_token_checks_key_prefix_and_signature():
    string = auth.channel_string("1.2", "private-a")
    good = auth.token(KEY, SECRET, string)
    assert auth.verify_token(KEY, SECRET, string, good)
    assert not auth.verify_token(KEY, SECRET, string, "other" + good[len(KEY) :])
    assert not auth.verify_token(KEY, SECRET, string, good[:-1] + "0")
    assert not auth.verify_token(
        KEY, SECRET, auth.channel_string("1.3", "private-a"), good
    )
    assert not auth.verify_token(KEY, SECRET, string, None)
    assert not auth.verify_token(KEY, SECRET, string, 12)


BODY = b'{"name":"foo","channels":["project-3"],"data":"{\\"some\\":\\"data\\"}"}'


def test_http_api_worked_example():
    assert auth.body_md5(BODY) == "ec365a775a4cd0599faeb73354201b6f"
    params = {
        "auth_key": KEY,
        "auth_timestamp": "1353088179",
        "auth_version": "1.0",
        "body_md5": "ec365a775a4cd0599faeb73354201b6f",
    }
    assert auth.sign_api(SECRET, "POST", "/apps/3/events", params) == (
        "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
    )


def test_signed_params_verify_and_tampering_fails():
    params = auth.signed_params(KEY, SECRET, "POST", "/apps/3/events", {"x": "1"}, BODY)
    auth.verify_api(KEY, SECRET, "POST", "/apps/3/events", params, BODY)
    for method, path, body, changed in (
        ("GET", "/apps/3/events", BODY, {}),
        ("POST", "/apps/4/events", BODY, {}),
        ("POST", "/apps/3/events", BODY + b" ", {}),
        ("POST", "/apps/3/events", BODY, {"x": "2"}),
        ("POST", "/apps/3/events", BODY, {"auth_key": "nope"}),
    ):
        tampered = dict(params, **changed)
        with pytest.raises(errors.HttpError) as error:
            auth.verify_api(KEY, SECRET, method, path, tampered, body)
        assert error.value.status == 401


def test_stale_timestamp_is_refused():
    params = auth.signed_params(KEY, SECRET, "GET", "/apps/3/channels", now=1000)
    auth.verify_api(KEY, SECRET, "GET", "/apps/3/channels", params, b"", now=1500)
    with pytest.raises(errors.HttpError) as error:
        auth.verify_api(KEY, SECRET, "GET", "/apps/3/channels", params, b"", now=1601)
    assert "expired" in error.value.message


def test_a_timestamp_that_is_no_number_of_seconds_is_refused():
    """Not a number, or an integer too large to compare with the clock
    (Python's float conversion overflows): 401, not a server error."""
    for timestamp in ("", "soon", "1" + "0" * 400):
        params = {"auth_key": KEY, "auth_timestamp": timestamp}
        with pytest.raises(errors.HttpError) as error:
            auth.verify_api(KEY, SECRET, "GET", "/apps/3/channels", params, b"")
        assert error.value.status == 401
        assert "auth_timestamp" in error.value.message


def test_api_string_lowercases_and_sorts_keys():
    assert auth.api_string(
        "get", "/p", {"B": "2", "a": "1", "auth_signature": "x"}
    ) == ("GET\n/p\na=1&b=2")


def test_only_auth_version_1_0_is_verified():
    for version in ("2.0", "1", ""):
        params = auth.signed_params(
            KEY, SECRET, "GET", "/apps/3/channels", {"auth_version": version}
        )
        params["auth_version"] = version
        params["auth_signature"] = auth.sign_api(
            SECRET, "GET", "/apps/3/channels", params
        )
        with pytest.raises(errors.HttpError) as error:
            auth.verify_api(KEY, SECRET, "GET", "/apps/3/channels", params, b"")
        assert error.value.status == 401
        assert "auth_version" in error.value.message


def test_verify_any_names_the_pair_that_signed():
    other_key, other_secret = "f" * 32, "e" * 64
    pairs = {KEY: SECRET, other_key: other_secret}
    string = auth.channel_string("1234.1234", "private-foobar")

    assert auth.verify_any(pairs, string, auth.token(KEY, SECRET, string)) == KEY
    token = auth.token(other_key, other_secret, string)
    assert auth.verify_any(pairs, string, token) == other_key
    # a pair's signature under another pair's key, a revoked key, no token
    assert auth.verify_any(pairs, string, auth.token(KEY, other_secret, string)) is None
    assert (
        auth.verify_any(
            {other_key: other_secret}, string, auth.token(KEY, SECRET, string)
        )
        is None
    )
    assert auth.verify_any(pairs, string, None) is None
    assert auth.verify_any(pairs, string, "no-colon") is None
