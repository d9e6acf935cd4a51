"""RFC 6455 codec, by section, on byte literals (no socket)."""

import base64
import hashlib
import json
import struct
import urllib.parse

import pytest

from pushi.proto import websocket as ws

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def request(path="/app/key?protocol=7", extra=b"", **headers):
    lines = [
        "GET %s HTTP/1.1" % path,
        "Host: example.com",
        "Upgrade: websocket",
        "Connection: keep-alive, Upgrade",
        "Sec-WebSocket-Key: %s" % KEY,
        "Sec-WebSocket-Version: 13",
    ]
    for name, value in headers.items():
        lines.append("%s: %s" % (name.replace("_", "-"), value))
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + extra


def masked(opcode, payload, fin=True, mask=b"\x01\x02\x03\x04", rsv=0):
    first = (0x80 if fin else 0) | rsv | opcode
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", first, 0x80 | length)
    elif length < 65536:
        header = struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, length)
    return header + mask + ws.unmask(payload, mask)


class TestHandshake:
    def test_accept_key_of_rfc_example(self):
        assert ws.accept_key(KEY) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

    def test_parses_path_query_and_headers(self):
        handshake, consumed = ws.parse_handshake(request(Origin="https://a.test"))
        assert handshake.path == "/app/key"
        assert handshake.query == {"protocol": "7"}
        assert handshake.headers["origin"] == "https://a.test"
        assert consumed == len(request(Origin="https://a.test"))

    def test_bytes_after_the_headers_are_not_consumed(self):
        data = request(extra=b"\x81\x80")
        _handshake, consumed = ws.parse_handshake(data)
        assert data[consumed:] == b"\x81\x80"

    def test_incomplete_asks_for_more(self):
        assert ws.parse_handshake(request()[:40]) == (None, 0)

    def test_oversized_headers_are_431(self):
        with pytest.raises(ws.HandshakeError) as error:
            ws.parse_handshake(request(X_Big="a" * 9000))
        assert error.value.status == 431

    def test_endless_header_without_terminator_is_431(self):
        with pytest.raises(ws.HandshakeError) as error:
            ws.parse_handshake(b"GET / HTTP/1.1\r\nX: " + b"a" * 9000)
        assert error.value.status == 431

    @pytest.mark.parametrize(
        "data, status",
        [
            (b"POST / HTTP/1.1\r\n\r\n", 405),
            (b"GET /\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 426),
            (b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nbroken line\r\n\r\n", 400),
        ],
    )
    def test_invalid_requests(self, data, status):
        with pytest.raises(ws.HandshakeError) as error:
            ws.parse_handshake(data)
        assert error.value.status == status

    def test_wrong_version_and_key(self):
        bad_version = request().replace(b"Version: 13", b"Version: 8")
        with pytest.raises(ws.HandshakeError):
            ws.parse_handshake(bad_version)
        bad_key = request().replace(KEY.encode(), b"short")
        with pytest.raises(ws.HandshakeError):
            ws.parse_handshake(bad_key)

    @pytest.mark.parametrize(
        "key",
        [
            KEY,
            "AAAAAAAAAAAAAAAAAAAAAA==",
            "AAAAAAAAAAAAAAAAAAAAAB==",
            "AAAAAAAAAAAAAAAAAAAAAA",
            "AAAAAAAAAAAAAAAAAAAAAA=",
            "AAAAAAAAAAAAAAAAAAAAAA===",
            "AAAAAAAAAAAAAAAAAAAA AA==",
            "AAAAAAAAAAAAAAAAAAAAAA==AA",
            "AAAAAAAAAAAAAAAAAAAA-_==",
            "AAAAAAAAAAAAAAAAAAAAAAAA",
            "AAAAAAAAAAAAAAAAAAAAAé==",
            "",
        ],
    )
    def test_a_key_is_accepted_as_base64_decodes_it_to_16_bytes(self, key):
        """RFC 6455 4.2.1 (5): the key is 16 bytes in base64, read as
        ``base64.b64decode(key, validate=True)`` reads it."""
        try:
            valid = len(base64.b64decode(key.encode("ascii"), validate=True)) == 16
        except (ValueError, UnicodeEncodeError):
            valid = False
        data = request().replace(KEY.encode(), key.encode("latin-1"))
        if valid:
            handshake, _ = ws.parse_handshake(data)
            assert (
                handshake.accept
                == base64.b64encode(
                    hashlib.sha1(key.encode() + ws.MAGIC).digest()
                ).decode()
            )
        else:
            with pytest.raises(ws.HandshakeError) as error:
                ws.parse_handshake(data)
            assert error.value.status == 400

    def test_missing_or_repeated_host_is_400(self):
        """RFC 6455 4.2.1 (1): the request has a Host header, just one."""
        without_host = request().replace(b"Host: example.com\r\n", b"")
        with pytest.raises(ws.HandshakeError) as error:
            ws.parse_handshake(without_host)
        assert error.value.status == 400
        with pytest.raises(ws.HandshakeError) as error:
            ws.parse_handshake(request(Host="other.com"))
        assert error.value.status == 400

    def test_unsupported_version_is_426_naming_13(self):
        """RFC 6455 4.2.2: the refusal of a version names the one served,
        and a 426 carries Upgrade (RFC 9110 15.5.22) with Connection:
        upgrade (RFC 9110 7.8)."""
        bad_version = request().replace(b"Version: 13", b"Version: 8")
        with pytest.raises(ws.HandshakeError) as error:
            ws.parse_handshake(bad_version)
        assert error.value.status == 426
        head = ws.reject_response(426, error.value.reason).partition(b"\r\n\r\n")[0]
        lines = head.split(b"\r\n")
        assert lines[0].startswith(b"HTTP/1.1 426 ")
        assert b"Sec-WebSocket-Version: 13" in lines
        assert b"Upgrade: websocket" in lines
        assert b"Connection: Upgrade, close" in lines
        # other refusals name no upgrade
        assert (
            b"Upgrade" not in ws.reject_response(400, "Bad").partition(b"\r\n\r\n")[0]
        )

    def test_responses(self):
        handshake, _ = ws.parse_handshake(request())
        answer = ws.accept_response(handshake)
        assert answer.startswith(b"HTTP/1.1 101 ")
        assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in answer
        refused = ws.reject_response(431, "Too large")
        assert refused.startswith(b"HTTP/1.1 431 Too large\r\n")
        head, _, body = refused.partition(b"\r\n\r\n")
        assert b"Content-Type: application/json\r\n" in head
        assert json.loads(body) == {
            "result": "error",
            "code": 431,
            "message": "Too large",
        }


class TestFrames:
    def test_text_message_in_one_frame(self):
        reader = ws.FrameReader()
        assert reader.feed(masked(ws.OP_TEXT, "héllo €".encode())) == [
            (ws.OP_TEXT, "héllo €")
        ]

    def test_byte_by_byte(self):
        reader = ws.FrameReader()
        data = masked(ws.OP_TEXT, b"x" * 300)
        out = []
        for index in range(len(data)):
            out += reader.feed(data[index : index + 1])
        assert out == [(ws.OP_TEXT, "x" * 300)]

    def test_64_bit_length(self):
        reader = ws.FrameReader(max_message=100000)
        assert reader.feed(masked(ws.OP_BINARY, b"y" * 70000)) == [
            (ws.OP_BINARY, b"y" * 70000)
        ]

    def test_fragments_with_a_ping_between(self):
        reader = ws.FrameReader()
        data = (
            masked(ws.OP_TEXT, b"ab", fin=False)
            + masked(ws.OP_PING, b"p")
            + masked(ws.OP_CONTINUATION, b"cd", fin=False)
            + masked(ws.OP_CONTINUATION, b"ef")
        )
        assert reader.feed(data) == [(ws.OP_PING, b"p"), (ws.OP_TEXT, "abcdef")]

    def test_unmasked_client_frame_is_1002(self):
        with pytest.raises(ws.WebSocketError) as error:
            ws.FrameReader().feed(b"\x81\x01a")
        assert error.value.code == 1002

    def test_reserved_bits_are_1002(self):
        with pytest.raises(ws.WebSocketError) as error:
            ws.FrameReader().feed(masked(ws.OP_TEXT, b"a", rsv=0x40))
        assert error.value.code == 1002

    def test_unknown_opcode_is_1002(self):
        with pytest.raises(ws.WebSocketError):
            ws.FrameReader().feed(masked(0x3, b"a"))

    def test_fragmented_or_long_control_frame_is_1002(self):
        with pytest.raises(ws.WebSocketError):
            ws.FrameReader().feed(masked(ws.OP_PING, b"a", fin=False))
        with pytest.raises(ws.WebSocketError):
            ws.FrameReader().feed(masked(ws.OP_PING, b"a" * 126))

    def test_continuation_without_start_is_1002(self):
        with pytest.raises(ws.WebSocketError):
            ws.FrameReader().feed(masked(ws.OP_CONTINUATION, b"a"))

    def test_new_message_inside_fragments_is_1002(self):
        reader = ws.FrameReader()
        reader.feed(masked(ws.OP_TEXT, b"a", fin=False))
        with pytest.raises(ws.WebSocketError):
            reader.feed(masked(ws.OP_TEXT, b"b"))

    def test_oversized_message_is_1009_from_the_header_alone(self):
        reader = ws.FrameReader(max_message=65536)
        header = masked(ws.OP_TEXT, b"z" * 65537)[:14]
        with pytest.raises(ws.WebSocketError) as error:
            reader.feed(header)
        assert error.value.code == 1009

    def test_oversized_across_fragments_is_1009(self):
        reader = ws.FrameReader(max_message=10)
        reader.feed(masked(ws.OP_TEXT, b"123456", fin=False))
        with pytest.raises(ws.WebSocketError) as error:
            reader.feed(masked(ws.OP_CONTINUATION, b"123456"))
        assert error.value.code == 1009

    def test_continuation_headers_count_toward_the_limit(self):
        """A continuation's header and mask (6 to 14 bytes) count with its
        payload: endless empty continuations reach the limit as any data
        does (close 1009) instead of growing the message's bookkeeping."""
        reader = ws.FrameReader(max_message=20)
        assert reader.feed(masked(ws.OP_TEXT, b"0123456789", fin=False)) == []
        # 10 + (6 + 4) = 20: at the limit
        assert reader.feed(masked(ws.OP_CONTINUATION, b"abcd")) == [
            (ws.OP_TEXT, "0123456789abcd")
        ]
        reader.feed(masked(ws.OP_TEXT, b"0123456789", fin=False))
        with pytest.raises(ws.WebSocketError) as error:
            reader.feed(masked(ws.OP_CONTINUATION, b"abcde"))
        assert error.value.code == 1009

    def test_empty_continuations_end_at_the_limit(self):
        reader = ws.FrameReader(max_message=65536)
        reader.feed(masked(ws.OP_TEXT, b"a", fin=False))
        empty = masked(ws.OP_CONTINUATION, b"", fin=False)
        # 1 + 6 * 10922 = 65533 bytes counted: still in
        assert reader.feed(empty * 10922) == []
        with pytest.raises(ws.WebSocketError) as error:
            reader.feed(empty)
        assert error.value.code == 1009

    def test_one_frame_message_may_use_the_whole_limit(self):
        reader = ws.FrameReader(max_message=100)
        assert reader.feed(masked(ws.OP_TEXT, b"x" * 100)) == [(ws.OP_TEXT, "x" * 100)]

    def test_invalid_utf8_in_a_first_fragment_is_1007_at_once(self):
        """RFC 6455 8.1: fail fast, at the fragment with the bad bytes."""
        reader = ws.FrameReader()
        with pytest.raises(ws.WebSocketError) as error:
            reader.feed(masked(ws.OP_TEXT, b'{"a":"\xff', fin=False))
        assert error.value.code == 1007

    def test_invalid_utf8_in_a_later_fragment_is_1007_there(self):
        reader = ws.FrameReader()
        reader.feed(masked(ws.OP_TEXT, b"ok", fin=False))
        # the start of a code point past U+10FFFF: no byte can follow it
        with pytest.raises(ws.WebSocketError) as error:
            reader.feed(masked(ws.OP_CONTINUATION, b"\xf4\x90", fin=False))
        assert error.value.code == 1007

    def test_a_character_split_across_fragments_is_text(self):
        reader = ws.FrameReader()
        data = (
            masked(ws.OP_TEXT, b"\xe2", fin=False)
            + masked(ws.OP_CONTINUATION, b"\x82", fin=False)
            + masked(ws.OP_CONTINUATION, b"\xac!")
        )
        assert reader.feed(data) == [(ws.OP_TEXT, "€!")]

    def test_a_character_cut_by_the_last_fragment_is_1007(self):
        reader = ws.FrameReader()
        reader.feed(masked(ws.OP_TEXT, b"a", fin=False))
        with pytest.raises(ws.WebSocketError) as error:
            reader.feed(masked(ws.OP_CONTINUATION, b"\xe2\x82"))
        assert error.value.code == 1007

    def test_fragmented_binary_message(self):
        reader = ws.FrameReader()
        data = masked(ws.OP_BINARY, b"\xff", fin=False) + masked(
            ws.OP_CONTINUATION, b"\xfe"
        )
        assert reader.feed(data) == [(ws.OP_BINARY, b"\xff\xfe")]

    def test_invalid_utf8_is_1007(self):
        with pytest.raises(ws.WebSocketError) as error:
            ws.FrameReader().feed(masked(ws.OP_TEXT, b"\xff\xfe"))
        assert error.value.code == 1007

    def test_started_is_when_the_unfinished_message_began(self):
        """``started`` dates the message the reader holds unfinished (a
        partial frame, or fragments) from its first byte, and control
        frames between fragments do not make it younger: the server closes
        a socket whose message is not whole ``MESSAGE_TIMEOUT`` seconds
        after it began."""
        reader = ws.FrameReader()
        assert reader.started is None
        first = masked(ws.OP_TEXT, b"ab", fin=False)
        reader.feed(first[:3], now=1.0)
        assert reader.started == 1.0
        reader.feed(first[3:], now=2.0)
        assert reader.started == 1.0
        assert reader.feed(masked(ws.OP_PING, b"p"), now=3.0) == [(ws.OP_PING, b"p")]
        reader.feed(masked(ws.OP_CONTINUATION, b"cd", fin=False), now=4.0)
        assert reader.started == 1.0
        assert reader.feed(masked(ws.OP_CONTINUATION, b"ef"), now=5.0) == [
            (ws.OP_TEXT, "abcdef")
        ]
        assert reader.started is None

    def test_started_follows_a_busy_stream(self):
        """Reads that end inside a frame of ever new messages date each
        unfinished one from the read where it began."""
        reader = ws.FrameReader()
        message = masked(ws.OP_TEXT, b"hello")
        reader.feed(message[:4], now=1.0)
        assert reader.started == 1.0
        assert reader.feed(message[4:] + message[:4], now=2.0) == [
            (ws.OP_TEXT, "hello")
        ]
        assert reader.started == 2.0
        reader.feed(message[4:], now=3.0)
        assert reader.started is None
        # a lone ping leaves nothing behind
        reader.feed(masked(ws.OP_PING, b""), now=4.0)
        assert reader.started is None

    def test_close_payloads(self):
        assert ws.parse_close(b"") == (1005, "")
        assert ws.parse_close(struct.pack("!H", 4001) + b"bye") == (4001, "bye")
        for bad in (b"\x03", struct.pack("!H", 1005), struct.pack("!H", 999)):
            with pytest.raises(ws.WebSocketError):
                ws.parse_close(bad)

    def test_server_frames(self):
        assert ws.text_frame("hi") == b"\x81\x02hi"
        assert ws.encode_frame(ws.OP_TEXT, b"a" * 200)[:4] == b"\x81\x7e\x00\xc8"
        assert ws.encode_frame(ws.OP_TEXT, b"a" * 70000)[:2] == b"\x81\x7f"
        assert ws.close_frame(4001, "x") == b"\x88\x03\x0f\xa1x"
        assert ws.close_frame(None) == b"\x88\x00"
        assert len(ws.close_frame(1000, "r" * 300)) == 2 + 125

    def test_client_frames_are_masked_and_read_back(self):
        mask = b"\x01\x02\x03\x04"
        frame = ws.encode_frame(ws.OP_TEXT, b"hi", mask=mask)
        assert frame == b"\x81\x82\x01\x02\x03\x04" + bytes([0x69, 0x6B])
        assert ws.encode_frame(ws.OP_TEXT, b"a" * 200, mask=mask)[:4] == (
            b"\x81\xfe\x00\xc8"
        )
        assert ws.encode_frame(ws.OP_PING, b"", mask=mask) == b"\x89\x80" + mask
        for size in (0, 5, 125, 126, 300, 70000):
            payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
            fragment = ws.encode_frame(ws.OP_BINARY, payload, fin=False, mask=mask)
            last = ws.encode_frame(ws.OP_CONTINUATION, b"!", mask=mask)
            reader = ws.FrameReader(max_message=1 << 20)
            assert reader.feed(fragment + last) == [(ws.OP_BINARY, payload + b"!")]


@pytest.mark.parametrize(
    "target",
    [
        "/app/key?protocol=7&client=js&version=8.4.0&flash=false",
        "/app/key",
        "/app/key/?",
        "/app/key?a&b=&=c&&a=2&d=e=f",
        "/app/key?x=1?y=2;z=3",
        "/app/k%41y?protocol=%37&a+b=c+d",
        "/app/key?p=7#frag",
        "//host/app/key?p=7",
        "http://host:80/app/key?protocol=7",
        "/app/ké?ü=ä",
        "/app/key?a\tb=1",
        "/app/key?a\nb=1",
        "*",
        "",
    ],
)
def test_a_target_splits_as_urllib_parse_reads_it(target):
    url = urllib.parse.urlsplit(target)
    query = {}
    for name, value in urllib.parse.parse_qsl(url.query, keep_blank_values=True):
        query.setdefault(name, value)
    assert ws.split_target(target) == (url.path, query)


@pytest.mark.parametrize(
    "target",
    [
        "/",
        "/a",
        "//a",
        "a/",
        "",
        "/a?b=c&d",
        "/%",
        "/+",
        "/#",
        "/\t",
        "/\r",
        "/\n",
        "/\x0b",
        "/é",
    ],
)
def test_a_plain_target_is_what_the_plain_pattern_matches(target):
    import re

    plain = re.compile(r"/(?!/)[^%+#\t\r\n]*\Z")
    assert ws._plain(target) is bool(plain.match(target))
