"""An app's open sockets over the cluster: ``GET /apps/<id>/sockets`` on
any node lists those of every node.

The asking node broadcasts ``sockets`` on the control channel
(``{"app_id", "request", "limit"}``, ``request`` a random id); every
other node answers with ``sockets_answer`` on the asker's own channel
(``{"request", "origin", "sockets", "total"}``: at most ``limit`` of its
sockets of the app, and how many it has).  Questions and answers stay
out of the journal (``Control.reply``): worth nothing once the asker gave
up.  The asker waits for as many answers as ``PUBLISH`` said received the
question, ``WAIT`` seconds at most (``control.Gathering``, as the debug
console's ``console_history``), and answers with what came and how many
nodes did not answer.  Nothing is sent while nobody asks.  Loop thread
only, as ``net/redis``.
"""

import os

from .control import Gathering

WAIT = 1.0
""" Seconds a question waits at most for the other nodes' answers """


class SocketsQuery:
    """Lists an app's sockets of every node, over ``control`` (the node's
    ``Control``) and ``loop`` (a ``NetiusLoop``), this node's from
    ``engine`` (``Queries.sockets``)."""

    def __init__(self, engine, control, loop):
        self.engine = engine
        self.control = control
        self.loop = loop
        self._asking = {}
        """ request id -> (its Gathering, what came so far, limit) """
        control.on("sockets", self._on_ask)
        control.on("sockets_answer", self._on_answer)

    def gather(self, app_id, limit, then):
        """``then(found)``: ``found`` a dict of the app's ``sockets`` over
        the cluster (at most ``limit``), their ``total``, and ``missing``,
        how many nodes did not answer (None when unknown: Redis did not
        take the question, or this node has no id yet)."""
        sockets, total = self.engine.sockets(app_id, limit)
        found = {"sockets": sockets, "total": total, "missing": None}
        if self.control.node_id is None:
            # no channel of its own yet: no answer could reach it
            then(found)
            return
        request = os.urandom(8).hex()

        def gathered():
            self._asking.pop(request, None)
            if gathering.expected is not None:
                found["missing"] = gathering.missing
            then(found)

        gathering = Gathering(self.loop, WAIT, gathered)
        self._asking[request] = (gathering, found, limit)
        self.control.broadcast(
            "sockets",
            {"app_id": app_id, "request": request, "limit": limit},
            gathering.asked,
            journal=False,
        )

    def _on_ask(self, data, sender):
        app_id, request, limit = (
            data.get("app_id"),
            data.get("request"),
            data.get("limit"),
        )
        if (
            sender is None
            or not isinstance(app_id, str)
            or not isinstance(request, str)
            or not isinstance(limit, int)
            or limit < 0
        ):
            return
        sockets, total = self.engine.sockets(app_id, limit)
        self.control.reply(
            sender,
            "sockets_answer",
            {
                "request": request,
                "origin": self.control.origin,
                "sockets": sockets,
                "total": total,
            },
        )

    def _on_answer(self, data, _sender):
        asking = self._asking.get(data.get("request"))
        if asking is None:
            return  # given up on (or not this node's)
        gathering, found, limit = asking
        origin, sockets, total = (
            data.get("origin"),
            data.get("sockets"),
            data.get("total"),
        )
        if (
            not isinstance(origin, str)
            or origin in gathering.answered
            or not isinstance(sockets, list)
            or not isinstance(total, int)
        ):
            return
        room = max(0, limit - len(found["sockets"]))
        found["sockets"].extend(
            entry for entry in sockets[:room] if isinstance(entry, dict)
        )
        found["total"] += max(0, total)
        gathering.answer(origin)
