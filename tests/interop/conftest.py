"""The interop tests run against one server and against a cluster of two
nodes on one ``redis-server`` (``cluster2``): the SDKs are not told, as
they would not be behind a load balancer. On ``cluster2`` the publishes,
REST queries and app changes go through node a, the first client of each
test connects to node b and the next ones alternate (``TwoNodes``), so
every behaviour with two clients crosses the nodes.

A test marked ``one_server`` (a cluster adds nothing to it: no client, or
what it checks never leaves one node) runs on the single server only.
"""

import pytest

SERVERS = ("single", "cluster2")


def pytest_collection_modifyitems(config, items):
    """Drops the ``cluster2`` runs of the ``one_server`` tests."""
    kept, dropped = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_cluster = callspec is not None and (
            callspec.params.get("server") == "cluster2"
        )
        if on_cluster and item.get_closest_marker("one_server"):
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(scope="module", params=SERVERS)
def server(request):
    """One Pushi server, or two nodes standing in for one (``TwoNodes``)."""
    from support import PushiServer

    if request.param == "single":
        instance = PushiServer().start()
    else:
        from cluster_support import TwoNodes

        from redis_support import require_redis

        require_redis()
        instance = TwoNodes()
        try:
            instance.start()
        except BaseException:
            instance.stop()
            raise
    yield instance
    instance.stop()
