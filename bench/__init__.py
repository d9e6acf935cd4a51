"""Load generator and orchestration of ``scripts/bench`` (see README.md).

The pieces are kept small and free of third-party dependencies so that the
generator stays lean; the protocol comes from ``pushi.proto`` (signatures,
frames, the stand-in server's handshake).  ``wire`` (the client side that
``pushi.proto`` has no use for: signed query strings, the upgrade request,
parsing of server frames and a header-only frame counter), ``stats``
(percentiles and ``/proc`` readers), ``worker`` and ``attacker`` (the
separate load processes), ``blaster`` (a stand-in server measuring the
generator), ``servers`` (the servers under test) and ``scenarios`` /
``cli`` (the runs).
"""
