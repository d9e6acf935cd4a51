"""The client's address and scheme behind a reverse proxy.

A proxy (nginx) connects to Pushi from its own address and says who its
client is in ``X-Forwarded-For`` (each proxy on the way appends the address
it was connected from) and ``X-Forwarded-Proto``.  Anyone can send these
headers, so they are believed only from a peer in ``PUSHI_TRUSTED_PROXIES``
(none by default), and of ``X-Forwarded-For`` only the right-most address
that is not itself a trusted proxy is taken: the entries left of it were
written by the client, which can put anything there.
"""

import ipaddress


def trusted(address, proxies):
    """True when ``address`` (text) is in one of the ``proxies`` networks."""
    if not proxies:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in proxies)


def client_address(peer, forwarded_for, proxies):
    """The client's address: ``peer`` (the socket's) unless it is a trusted
    proxy, then the right-most untrusted address of ``forwarded_for`` (an
    ``X-Forwarded-For`` value, or None).  An entry that is no address stops
    the walk at the last hop that was believed."""
    if not forwarded_for or not trusted(peer, proxies):
        return peer
    address = peer
    for item in reversed(forwarded_for.split(",")):
        item = item.strip()
        try:
            item = str(ipaddress.ip_address(item))
        except ValueError:
            return address
        address = item
        if not trusted(item, proxies):
            return address
    return address


def scheme(peer, forwarded_proto, proxies, default):
    """``http`` or ``https`` as a trusted proxy's client used it
    (``X-Forwarded-Proto``, its last value), else ``default``."""
    if not forwarded_proto or not trusted(peer, proxies):
        return default
    value = forwarded_proto.split(",")[-1].strip().lower()
    return value if value in ("http", "https") else default
