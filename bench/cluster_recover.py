"""The time to recover missed events across the nodes of a cluster, next
to one process: ``python -m bench.cluster_recover [--rounds N]``.

Starts a ``redis-server`` (no persistence) and two Pushi nodes on it
sharing one data dir, all on 127.0.0.1 with free ports, and one Pushi
process alone.  Each round a client subscribes on node A (one process:
the process), notes its position and disconnects; ``RECOVER_MISSED``
events are published through node A in batches; a client connects to node
B and the time from sending the subscribe with ``since`` to the last
missed event received is measured.  Prints p50 and p99 of each setup;
every process it started is stopped by pid on exit."""

import argparse
import os
import shutil
import sys
import tempfile

from . import servers, stats
from .scenarios import recover_rounds

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class NodeServer(servers.PushiServer):
    """A Pushi node of a cluster: ``PUSHI_REDIS_URL`` set, the data dir
    (and so the apps) shared with the other nodes."""

    def __init__(self, workdir, redis_url, data_dir):
        servers.PushiServer.__init__(self, workdir)
        self.redis_url = redis_url
        self.data_dir = data_dir

    def env(self):
        env = servers.PushiServer.env(self)
        env["PUSHI_REDIS_URL"] = self.redis_url
        env["PUSHI_DATA_DIR"] = self.data_dir
        return env


def start_redis(workdir):
    port = servers.free_port()
    command = [REDIS_SERVER, "--port", str(port), "--bind", servers.HOST]
    command += ["--save", "", "--appendonly", "no", "--dir", workdir]
    proc = servers.spawn(
        command, cwd=workdir, log_path=os.path.join(workdir, "redis.log")
    )
    if not servers.wait_port(port, proc, 10):
        raise RuntimeError("redis-server did not start")
    return proc, "redis://%s:%d/0" % (servers.HOST, port)


def report(label, times, recovered, rounds):
    summary = stats.summarize(times)
    print(
        "%-28s p50 %7s ms  p99 %7s ms  %d of %d rounds recovered"
        % (label, summary["p50"], summary["p99"], recovered, rounds)
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    options = parser.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="pushi-bench-cluster-")
    started = []
    redis = None
    try:
        single = servers.PushiServer(os.path.join(workdir, "single"))
        os.makedirs(single.workdir)
        single.start()
        started.append(single)
        times, recovered = recover_rounds(single, single, options.rounds)
        report("one process", times, recovered, options.rounds)

        redis, url = start_redis(workdir)
        data_dir = os.path.join(workdir, "shared")
        nodes = []
        for name in ("a", "b"):
            node = NodeServer(os.path.join(workdir, name), url, data_dir)
            os.makedirs(node.workdir)
            if nodes:
                # the second node serves the app the first one made
                node.create_app = lambda _name, app=nodes[0].app: app
            node.start()
            started.append(node)
            nodes.append(node)
        times, recovered = recover_rounds(nodes[0], nodes[1], options.rounds)
        report("two nodes (A to B), Redis", times, recovered, options.rounds)
    finally:
        for server in started:
            server.stop()
        if redis is not None:
            servers.stop_process(redis)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
