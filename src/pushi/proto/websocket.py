"""RFC 6455 for a server, sans I/O: the opening handshake and frames.

``parse_handshake`` turns the bytes of an HTTP upgrade request into a
``Handshake`` (or asks for more, or raises ``HandshakeError`` with the HTTP
status to answer).  ``FrameReader`` turns client bytes into whole messages,
reassembling fragments, unmasking, and enforcing the limits; a violation
raises ``WebSocketError`` carrying the close code.  The encoders build the
unmasked frames a server sends (and, given a mask, the masked frames of a
client such as a load generator).  Nothing here touches a socket, nor keeps
a timer: the reader dates the message it holds unfinished (``started``)
and the server closes a socket whose message is older than
``MESSAGE_TIMEOUT``.
"""

import binascii
import codecs
import hashlib
import json
import struct
import time
import urllib.parse

MAGIC = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

MAX_HANDSHAKE = 8192
MAX_MESSAGE = 65536

MESSAGE_TIMEOUT = 15
""" Seconds a message has to arrive whole from its first byte (fragments
and control frames between them included) """

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED = 1003
CLOSE_NO_STATUS = 1005
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011


class HandshakeError(Exception):
    """A refused upgrade request: answer with HTTP ``status``."""

    def __init__(self, status: int, reason: str) -> None:
        Exception.__init__(self, reason)
        self.status = status
        self.reason = reason


class WebSocketError(Exception):
    """A protocol violation by the client: close with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        Exception.__init__(self, reason)
        self.code = code
        self.reason = reason


class Handshake:
    """A parsed upgrade request: path, query (first value of each name),
    lower-cased headers, and the accept key for the answer."""

    __slots__ = ("path", "query", "headers", "accept")

    path: str
    query: dict[str, str]
    headers: dict[str, str]
    accept: str

    def __init__(
        self, path: str, query: dict[str, str], headers: dict[str, str], accept: str
    ) -> None:
        self.path = path
        self.query = query
        self.headers = headers
        self.accept = accept


def accept_key(client_key: str) -> str:
    """``Sec-WebSocket-Accept`` for a ``Sec-WebSocket-Key``."""
    digest = hashlib.sha1(client_key.encode("ascii") + MAGIC).digest()
    # base64.b64encode, without its wrapper (one per socket)
    return binascii.b2a_base64(digest, newline=False).decode("ascii")


def parse_handshake(
    buffer: bytes, max_size: int = MAX_HANDSHAKE
) -> tuple[Handshake | None, int]:
    """Parses an upgrade request at the start of ``buffer``.

    Returns ``(handshake, consumed)``, or ``(None, 0)`` while the headers
    are incomplete; raises ``HandshakeError`` for a request that is too
    large or not a valid WebSocket upgrade.
    """
    end = buffer.find(b"\r\n\r\n", 0, max_size + 4)
    if end == -1:
        if len(buffer) > max_size:
            raise HandshakeError(431, "Request header fields too large")
        return None, 0
    if end > max_size:
        raise HandshakeError(431, "Request header fields too large")
    try:
        text = bytes(buffer[:end]).decode("latin-1")
    except Exception:
        raise HandshakeError(400, "Malformed request") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HandshakeError(400, "Malformed request line")
    method, target, version = parts
    if method != "GET":
        raise HandshakeError(405, "Only GET upgrades to a WebSocket")
    if version != "HTTP/1.1":
        raise HandshakeError(400, "HTTP/1.1 required")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, separator, value = line.partition(":")
        if not separator or not name or name != name.strip():
            raise HandshakeError(400, "Malformed header line")
        name = name.lower()
        value = value.strip()
        if name == "host" and name in headers:
            raise HandshakeError(400, "More than one Host header")
        headers[name] = headers[name] + ", " + value if name in headers else value
    if not headers.get("host"):
        raise HandshakeError(400, "Host header required")
    if "websocket" not in headers.get("upgrade", "").lower():
        raise HandshakeError(426, "WebSocket upgrade required")
    connection = [
        token.strip() for token in headers.get("connection", "").lower().split(",")
    ]
    if "upgrade" not in connection:
        raise HandshakeError(400, "Connection: Upgrade required")
    if headers.get("sec-websocket-version") != "13":
        raise HandshakeError(426, "Sec-WebSocket-Version 13 required")
    client_key = headers.get("sec-websocket-key", "")
    try:
        # base64.b64decode(validate=True), without its wrapper
        key = binascii.a2b_base64(client_key.encode("ascii"), strict_mode=True)
        if len(key) != 16:
            raise ValueError(client_key)
    except Exception:
        raise HandshakeError(400, "Invalid Sec-WebSocket-Key") from None
    path, query = split_target(target)
    handshake = Handshake(path, query, headers, accept_key(client_key))
    return handshake, end + 4


def _plain(target: str) -> bool:
    """Whether ``target`` is a path (not ``//``) and query with nothing
    escaped, no ``+``, no fragment, no tab or line end: what
    ``/(?!/)[^%+#\\t\\r\\n]*\\Z`` matches, each character looked for
    with ``in`` (a regex's class tests each character in turn)."""
    return (
        target[:1] == "/"
        and target[1:2] != "/"
        and "%" not in target
        and "+" not in target
        and "#" not in target
        and "\t" not in target
        and "\r" not in target
        and "\n" not in target
    )


def split_target(target: str) -> tuple[str, dict[str, str]]:
    """The path of a request target and its query (the first value of each
    name, blank values kept), as ``urllib.parse`` reads them.  A plain
    path and query (nothing escaped, no ``+``, no fragment: what clients
    send) is split here directly, which ``urllib.parse`` would leave as
    it is."""
    query: dict[str, str] = {}
    if _plain(target):
        path, _, text = target.partition("?")
        for field in text.split("&"):
            if field:
                name, _, value = field.partition("=")
                query.setdefault(name, value)
        return path, query
    url = urllib.parse.urlsplit(target)
    for name, value in urllib.parse.parse_qsl(url.query, keep_blank_values=True):
        query.setdefault(name, value)
    return url.path, query


def accept_response(handshake: Handshake) -> bytes:
    """The ``101 Switching Protocols`` answer to a valid handshake."""
    return (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + handshake.accept.encode("ascii") + b"\r\n\r\n"
    )


def reject_response(status: int, reason: str) -> bytes:
    """An HTTP error answer to a refused handshake (connection closes), with
    the REST API's JSON error body.  A 426 names what to upgrade to, as
    HTTP requires (``Upgrade``, listed in ``Connection``), and the one
    WebSocket version served (RFC 6455 4.2.2)."""
    body = json.dumps(
        {"result": "error", "code": status, "message": reason}, separators=(",", ":")
    ).encode("utf-8")
    if status == 426:
        upgrade = (
            "Upgrade: websocket\r\n"
            "Sec-WebSocket-Version: 13\r\n"
            "Connection: Upgrade, close\r\n"
        )
    else:
        upgrade = "Connection: close\r\n"
    return (
        "HTTP/1.1 %d %s\r\n"
        "Content-Type: application/json\r\n"
        "Content-Length: %d\r\n"
        "%s\r\n" % (status, reason, len(body), upgrade)
    ).encode("latin-1") + body


def unmask(payload: bytes, mask: bytes) -> bytes:
    """XORs ``payload`` with the repeating 4-byte ``mask``."""
    length = len(payload)
    if not length:
        return b""
    key = (mask * (length // 4 + 1))[:length]
    value = int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")
    return value.to_bytes(length, "big")


def encode_frame(
    opcode: int, payload: bytes, fin: bool = True, mask: bytes | None = None
) -> bytes:
    """A frame carrying ``payload`` (bytes): unmasked as a server sends it,
    or with a 4-byte ``mask`` as a client must send it (RFC 6455 5.3)."""
    first = (0x80 if fin else 0) | opcode
    masked = 0x80 if mask is not None else 0
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", first, masked | length)
    elif length < 65536:
        header = struct.pack("!BBH", first, masked | 126, length)
    else:
        header = struct.pack("!BBQ", first, masked | 127, length)
    if mask is None:
        return header + payload
    return header + mask + unmask(payload, mask)


def text_frame(text: str) -> bytes:
    """A text frame for ``text`` (str), encoded as UTF-8."""
    return encode_frame(OP_TEXT, text.encode("utf-8"))


def close_frame(code: int | None = CLOSE_NORMAL, reason: str = "") -> bytes:
    """A close frame with ``code`` and a reason cut to fit 123 bytes."""
    if code is None:
        return encode_frame(OP_CLOSE, b"")
    data = reason.encode("utf-8")[:123]
    return encode_frame(OP_CLOSE, struct.pack("!H", code) + data)


def parse_close(payload: bytes) -> tuple[int, str]:
    """``(code, reason)`` of a close frame's payload; validates both."""
    if not payload:
        return CLOSE_NO_STATUS, ""
    if len(payload) == 1:
        raise WebSocketError(CLOSE_PROTOCOL_ERROR, "Close payload of one byte")
    (code,) = struct.unpack("!H", payload[:2])
    if not (1000 <= code <= 1014 or 3000 <= code <= 4999) or code in (1004, 1005, 1006):
        raise WebSocketError(CLOSE_PROTOCOL_ERROR, "Invalid close code %d" % code)
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise WebSocketError(CLOSE_INVALID_DATA, "Close reason is not UTF-8") from None
    return code, reason


class FrameReader:
    """Incremental parser of client frames into messages.

    ``feed(data)`` returns a list of ``(opcode, payload)``: whole text or
    binary messages (fragments joined, text decoded to ``str``) and control
    frames (``OP_PING``, ``OP_PONG``, ``OP_CLOSE`` with raw payload) in
    arrival order, at most ``limit`` of them per call (the bytes of the
    others wait for the next call, which may bring no new data).  A message
    larger than ``max_message`` bytes raises ``WebSocketError(1009)`` as
    soon as a header says so; a fragmented message's continuations count
    their header and mask too, so no number of (empty) fragments gets past
    the limit.  Text that is not UTF-8 raises ``WebSocketError(1007)`` at
    the fragment where it goes wrong.

    ``started`` is the time (``time.monotonic``, or the ``now`` given to
    ``feed``) at which the message the reader holds unfinished (a partial
    frame, or fragments) began to arrive, None when it holds nothing;
    control frames between fragments do not make it younger.
    """

    __slots__ = (
        "max_message",
        "started",
        "_buffer",
        "_message",
        "_decoder",
        "_fragment_opcode",
        "_size",
    )

    max_message: int
    started: float | None
    _buffer: bytes
    _message: bytearray | None
    _decoder: codecs.IncrementalDecoder | None
    _fragment_opcode: int | None
    _size: int

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self.max_message = max_message
        self.started = None
        self._buffer = b""
        # the fragments so far of an unfinished message, and for text the
        # decoder that checks them as they come
        self._message = None
        self._decoder = None
        self._fragment_opcode = None
        self._size = 0

    def feed(
        self, data: bytes, limit: int = 1 << 30, now: float | None = None
    ) -> list[tuple[int, str | bytes]]:
        buffer = self._buffer + data if self._buffer else data
        messages: list[tuple[int, str | bytes]] = []
        offset = 0
        size = len(buffer)
        # whether a message or a control frame outside a message ended
        # here: what the reader holds now began in this feed
        ended = False
        # past ``limit`` messages, the rest waits for the next call
        while size - offset >= 2 and len(messages) < limit:
            first = buffer[offset]
            second = buffer[offset + 1]
            fin = first & 0x80
            opcode = first & 0x0F
            if first & 0x70:
                raise WebSocketError(CLOSE_PROTOCOL_ERROR, "Reserved bits set")
            if not second & 0x80:
                raise WebSocketError(
                    CLOSE_PROTOCOL_ERROR, "Client frames must be masked"
                )
            length = second & 0x7F
            header = 2
            if length == 126:
                if size - offset < 4:
                    break
                (length,) = struct.unpack_from("!H", buffer, offset + 2)
                header = 4
            elif length == 127:
                if size - offset < 10:
                    break
                (length,) = struct.unpack_from("!Q", buffer, offset + 2)
                header = 10
            control = opcode & 0x8
            if control:
                if opcode not in (OP_CLOSE, OP_PING, OP_PONG):
                    raise WebSocketError(
                        CLOSE_PROTOCOL_ERROR, "Unknown opcode %d" % opcode
                    )
                if length > 125 or not fin:
                    raise WebSocketError(CLOSE_PROTOCOL_ERROR, "Invalid control frame")
            else:
                if opcode not in (OP_CONTINUATION, OP_TEXT, OP_BINARY):
                    raise WebSocketError(
                        CLOSE_PROTOCOL_ERROR, "Unknown opcode %d" % opcode
                    )
                if opcode == OP_CONTINUATION and self._message is None:
                    raise WebSocketError(
                        CLOSE_PROTOCOL_ERROR, "Unexpected continuation"
                    )
                if opcode != OP_CONTINUATION and self._message is not None:
                    raise WebSocketError(
                        CLOSE_PROTOCOL_ERROR, "Expected a continuation"
                    )
                total = length
                if opcode == OP_CONTINUATION:
                    total += self._size + header + 4
                if total > self.max_message:
                    raise WebSocketError(
                        CLOSE_TOO_BIG, "Message over %d bytes" % self.max_message
                    )
            end = offset + header + 4 + length
            if size < end:
                break
            mask = buffer[offset + header : offset + header + 4]
            payload = unmask(buffer[offset + header + 4 : end], mask)
            offset = end
            if control:
                messages.append((opcode, payload))
                ended = ended or self._message is None
            elif fin and opcode != OP_CONTINUATION:
                messages.append((opcode, self._decode(opcode, payload)))
                ended = True
            elif opcode != OP_CONTINUATION:
                self._fragment_opcode = opcode
                self._size = length
                if opcode == OP_TEXT:
                    decoder = codecs.getincrementaldecoder("utf-8")()
                    self._decoder = decoder
                    self._check(decoder, payload, False)
                self._message = bytearray(payload)
            else:
                # a continuation without a first fragment was refused above
                message = self._message
                assert message is not None
                self._size = total
                if self._decoder is not None:
                    self._check(self._decoder, payload, fin != 0)
                message += payload
                if fin:
                    text = self._fragment_opcode == OP_TEXT
                    self._message = None
                    self._decoder = None
                    self._fragment_opcode = None
                    self._size = 0
                    if text:
                        messages.append((OP_TEXT, message.decode("utf-8")))
                    else:
                        messages.append((OP_BINARY, bytes(message)))
                    ended = True
        self._buffer = buffer[offset:] if offset < size else b""
        if self._message is None and not self._buffer:
            self.started = None
        elif ended or self.started is None:
            self.started = time.monotonic() if now is None else now
        return messages

    @staticmethod
    def _check(decoder: codecs.IncrementalDecoder, payload: bytes, final: bool) -> None:
        """Checks a text fragment with the message's decoder: an invalid
        sequence fails here, a character cut between fragments waits for
        the next one (or fails at the last)."""
        try:
            decoder.decode(payload, final)
        except UnicodeDecodeError:
            raise WebSocketError(
                CLOSE_INVALID_DATA, "Text message is not UTF-8"
            ) from None

    @staticmethod
    def _decode(opcode: int, payload: bytes) -> str | bytes:
        if opcode != OP_TEXT:
            return payload
        try:
            return payload.decode("utf-8")
        except UnicodeDecodeError:
            raise WebSocketError(
                CLOSE_INVALID_DATA, "Text message is not UTF-8"
            ) from None
