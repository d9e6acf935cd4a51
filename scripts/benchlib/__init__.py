"""Load generator and orchestration for ``scripts/bench``.

The pieces are kept small and free of third-party dependencies so that the
generator stays lean: ``signer`` (Pusher HTTP API signatures), ``wsproto``
(WebSocket client framing and a header-only frame counter), ``stats``
(percentiles and ``/proc`` readers), ``worker`` (the separate load processes),
``servers`` (the servers under test) and ``scenarios`` / ``cli`` (the runs).
"""
