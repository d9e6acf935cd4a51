"""RFC 6455 over real sockets against the real server: the opening
handshake's refusals."""

import socket

from support import read_until, upgrade_request


def refusal(server, request):
    """``(status line, header lines)`` of the server's answer to a raw
    upgrade ``request``."""
    raw = socket.create_connection(("127.0.0.1", server.server_port))
    raw.sendall(request)
    head = read_until(raw, b"\r\n\r\n").partition(b"\r\n\r\n")[0]
    raw.close()
    lines = head.split(b"\r\n")
    return lines[0], lines[1:]


def still_served(server, app):
    client = server.connect(app)
    answer = client.subscribe("after")
    client.close()
    return answer["event"] == "pusher_internal:subscription_succeeded"


def test_an_unsupported_version_is_426_naming_version_13(server, app):
    """RFC 6455 4.2.2: the answer names the version served; a 426 carries
    the protocol to upgrade to (RFC 9110 15.5.22)."""
    request = upgrade_request("/app/%s?protocol=7" % app["key"]).replace(
        b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 8"
    )
    status, headers = refusal(server, request)
    assert status.startswith(b"HTTP/1.1 426 ")
    assert b"Sec-WebSocket-Version: 13" in headers
    assert b"Upgrade: websocket" in headers
    assert still_served(server, app)


def test_an_upgrade_without_host_is_400(server, app):
    """RFC 6455 4.2.1: a handshake without Host is a bad request."""
    request = upgrade_request("/app/%s?protocol=7" % app["key"]).replace(
        b"Host: x\r\n", b""
    )
    status, _headers = refusal(server, request)
    assert status.startswith(b"HTTP/1.1 400 ")
