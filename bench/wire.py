"""The client side of the protocol for the load generator, over
:mod:`pushi.proto` (signatures, frame encoding and masking live there).

Only what the server's package has no use for: the query string of a
signed HTTP API request, the WebSocket upgrade request, a parser of server
frames for the few messages that are read as JSON, and
:class:`FrameCounter`, which counts server frames from their headers alone
so that most subscribers never touch the payload bytes.
"""

import base64
import os

from pushi.proto import auth, websocket
from pushi.proto.websocket import OP_PING, OP_TEXT


def signed_query(key, secret, method, path, body=None, now=None):
    """The query string (without ``?``) of a signed HTTP API request with
    the raw ``body`` (bytes or str), at ``now`` (default: the time).
    Values are hex, digits or the key, so no escaping is needed."""
    if isinstance(body, str):
        body = body.encode("utf-8")
    params = auth.signed_params(key, secret, method, path, body=body, now=now)
    return "&".join("%s=%s" % item for item in params.items())


def handshake_request(host, port, path):
    """Returns the HTTP upgrade request (bytes) for ``path``."""
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    return (
        "GET %s HTTP/1.1\r\n"
        "Host: %s:%d\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        "Sec-WebSocket-Key: %s\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "\r\n" % (path, host, port, key)
    ).encode("ascii")


def encode_frame(payload, opcode=OP_TEXT, mask=None, fin=True):
    """One client frame of ``payload`` (str or bytes), final unless ``fin``
    is false; clients must mask, ``mask`` (4 bytes) defaults to random
    bytes."""
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    mask = os.urandom(4) if mask is None else mask
    return websocket.encode_frame(opcode, payload, fin, mask)


def parse_frames(buffer):
    """Parses the complete frames at the start of ``buffer`` (bytes-like).

    Returns ``(frames, consumed)`` where ``frames`` is a list of
    ``(fin, opcode, payload)`` and ``consumed`` the number of bytes used; an
    incomplete trailing frame is left for the next call.  Masked frames (not
    expected from a server) are unmasked.
    """
    frames = []
    pos = 0
    size = len(buffer)
    while size - pos >= 2:
        b0 = buffer[pos]
        b1 = buffer[pos + 1]
        length = b1 & 0x7F
        head = 2
        if length == 126:
            if size - pos < 4:
                break
            length = (buffer[pos + 2] << 8) | buffer[pos + 3]
            head = 4
        elif length == 127:
            if size - pos < 10:
                break
            length = int.from_bytes(buffer[pos + 2 : pos + 10], "big")
            head = 10
        masked = b1 & 0x80
        if masked:
            head += 4
        if size - pos < head + length:
            break
        payload = bytes(buffer[pos + head : pos + head + length])
        if masked:
            mask = buffer[pos + head - 4 : pos + head]
            payload = websocket.unmask(payload, mask)
        frames.append((bool(b0 & 0x80), b0 & 0x0F, payload))
        pos += head + length
    return frames, pos


class FrameCounter:
    """Counts complete data messages in a server byte stream from the frame
    headers alone, skipping payloads without copying them.

    ``feed`` returns how many final data frames (text, binary, or the last
    fragment of a fragmented message) started in the bytes given; control
    frames are counted apart in ``controls`` and, for pings, their payload
    is kept in ``pings`` when it arrived whole (so that a pong can be sent).
    The stream must start at a frame boundary.
    """

    __slots__ = ("skip", "partial", "controls", "pings")

    def __init__(self):
        self.skip = 0
        self.partial = b""
        self.controls = 0
        self.pings = []

    def feed(self, data):
        """Consumes ``data`` (bytes) and returns the number of messages."""
        size = len(data)
        skip = self.skip
        if self.partial:
            data = self.partial + data
            size = len(data)
            self.partial = b""
        elif skip >= size:
            self.skip = skip - size
            return 0
        pos = skip
        count = 0
        while pos < size:
            if size - pos < 2:
                self.partial = data[pos:]
                self.skip = 0
                return count
            b0 = data[pos]
            length = data[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    self.partial = data[pos:]
                    self.skip = 0
                    return count
                length = (data[pos + 2] << 8) | data[pos + 3]
                head = 4
            elif length == 127:
                if size - pos < 10:
                    self.partial = data[pos:]
                    self.skip = 0
                    return count
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                head = 10
            if data[pos + 1] & 0x80:
                head += 4
            opcode = b0 & 0x0F
            if opcode < 8:
                if b0 & 0x80:
                    count += 1
            else:
                self.controls += 1
                if opcode == OP_PING and pos + head + length <= size:
                    self.pings.append(bytes(data[pos + head : pos + head + length]))
            pos += head + length
        self.skip = pos - size
        return count
