"""The benchmark scenarios: each starts a fresh server, drives it from
separate worker processes and returns result dicts (one JSON line each).

Measurement window of a load phase: from the first trigger sent to the end
of the drain (all expected frames counted, no progress for ``stall``
seconds, or ``max_drain`` seconds after the last trigger).  CPU figures are
deltas of ``/proc/<pid>/stat`` over that window, in percent of one core.
"""

import itertools
import json
import math
import os
import resource
import secrets
import shutil
import socket
import sys
import threading
import time

from pushi.proto import websocket

from . import procs, servers, stats, wire

#: a generator process above this share of one core is the bottleneck
GENERATOR_BOUND_PCT = 90.0
#: sampled subscribers (JSON parsed, latency and loss) per fan-out run
SAMPLED = 20

PROFILES = {
    "default": {
        "duration": 10.0,
        "warmup": 2.0,
        "fanout_sizes": [1000, 5000],
        "fanout_inflight": 4,
        "channels": 2000,
        "connections": 5000,
        "idle": 60.0,
        "broadcast": 5000,
        "broadcast_rate": 1.0,
        "persist_stored": [1000, 100000],
        "persist_inflight": [8, 64],
        "max_drain": 30.0,
        "preload_time": 120.0,
        "abuse_duration": 10.0,
        "abuse_drain": 10.0,
        "personal_stored": 100000,
        "recover_rounds": 20,
    },
    "quick": {
        "duration": 3.0,
        "warmup": 1.0,
        "fanout_sizes": [200, 1000],
        "fanout_inflight": 4,
        "channels": 500,
        "connections": 1000,
        "idle": 10.0,
        "broadcast": 1000,
        "broadcast_rate": 2.0,
        "persist_stored": [1000, 10000],
        "persist_inflight": [8, 64],
        "max_drain": 6.0,
        "preload_time": 40.0,
        "abuse_duration": 5.0,
        "abuse_drain": 5.0,
        "personal_stored": 20000,
        "recover_rounds": 5,
    },
}

#: bound on frames one phase may ask for (the time bound usually hits first)
MAX_DELIVERIES = 3_000_000
#: a server using less than this share of a core counts as idle
IDLE_SHARE = 0.05


def log(message):
    """Progress goes to stderr; stdout carries only results."""
    sys.stderr.write("[bench] %s\n" % message)
    sys.stderr.flush()


def machine_busy_seconds():
    """Busy CPU seconds of the whole machine since boot (all cores)."""
    with open("/proc/stat") as file:
        fields = [int(value) for value in file.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / stats.CLOCK_TICKS


def server_pids(server):
    """The roots of the server's process trees (every node and Redis with
    ``--nodes``; a supervisor's tree holds its workers, writer and Redis)."""
    return getattr(server, "pids", [server.pid])


def root_cpu_seconds(server):
    """CPU seconds of each of the server's process trees, in
    ``server_pids`` order (with ``--nodes``: node 1, node 2, ..., Redis)."""
    return [stats.tree_cpu_seconds(pid) for pid in server_pids(server)]


def server_cpu_seconds(server):
    """CPU seconds of the server's process trees."""
    return sum(root_cpu_seconds(server))


def server_rss_bytes(server):
    """The summed RSS of the server's process trees."""
    return sum(stats.tree_rss_bytes(pid) for pid in server_pids(server))


def server_processes(server):
    """Each process of the server's trees by pid: its role (``servers.
    process_role``), RSS in KB and CPU seconds so far."""
    processes = {}
    for root in server_pids(server):
        for pid in stats.process_tree(root):
            processes[pid] = {
                "role": servers.process_role(pid, pid == root),
                "rss_kb": stats.rss_bytes(pid) // 1024,
                "cpu_s": stats.cpu_seconds(pid),
            }
    return processes


def by_role(after, before, wall):
    """The processes of ``server_processes`` grouped by role: how many,
    the RSS of each (KB) and the share of a core each used since
    ``before`` (over ``wall`` seconds)."""
    roles = {}
    for pid, process in sorted(after.items()):
        cpu = process["cpu_s"] - before.get(pid, {}).get("cpu_s", 0.0)
        role = roles.setdefault(process["role"], {"n": 0, "rss_kb": [], "cpu_pct": []})
        role["n"] += 1
        role["rss_kb"].append(process["rss_kb"])
        role["cpu_pct"].append(round(100 * cpu / max(1e-9, wall), 1))
    return roles


def summed(answers, key):
    """The ``key`` counters (name to count) of several answers, added."""
    total = {}
    for answer in answers:
        for name, value in answer.get(key, {}).items():
            total[name] = total.get(name, 0) + value
    return total


class Meter:
    """CPU of the server tree(s), of each generator process, of this process
    and of the whole machine over one measurement window; with ``--nodes``
    also Redis's CPU and ``INFO commandstats`` apart."""

    def __init__(self, server, generators):
        self.server = server
        self.generators = generators
        self.redis = getattr(server, "redis", None)
        self.t0 = time.monotonic()
        self.roots0 = root_cpu_seconds(server)
        if self.redis:
            self.redis0 = stats.cpu_seconds(self.redis.proc.pid)
            self.commands0 = self.redis.commandstats()
        self.gen0 = [worker.cpu() for worker in generators]
        self.self0 = stats.cpu_seconds(os.getpid())
        self.machine0 = machine_busy_seconds()

    def stop(self):
        """Returns the CPU figures of the window."""
        wall = max(1e-9, time.monotonic() - self.t0)
        # each tree's /proc read once for the total and the split
        roots = root_cpu_seconds(self.server)
        server = sum(roots) - sum(self.roots0)
        gens = [
            worker.cpu() - start
            for worker, start in zip(self.generators, self.gen0, strict=True)
        ]
        own = stats.cpu_seconds(os.getpid()) - self.self0
        machine = machine_busy_seconds() - self.machine0
        gen_max = max(gens) if gens else 0.0
        figures = self.redis_figures(wall) if self.redis else {}
        if len(roots) > 1:
            # which node (or Redis) the server's CPU went to
            figures["server_cpu_pct_by_root"] = [
                round(100 * (cpu - before) / wall, 1)
                for cpu, before in zip(roots, self.roots0, strict=True)
            ]
        return figures | {
            "wall_s": round(wall, 3),
            "server_cpu_s": server,
            "server_cpu_pct": round(100 * server / wall, 1),
            "generator_cpu_pct": round(100 * sum(gens) / wall, 1),
            "generator_cpu_pct_by_process": [round(100 * g / wall, 1) for g in gens],
            "generator_bound": 100 * gen_max / wall > GENERATOR_BOUND_PCT,
            "machine_cpu_pct": round(100 * machine / wall, 1),
            "other_cpu_pct": round(
                100 * max(0.0, machine - server - sum(gens) - own) / wall, 1
            ),
        }

    def redis_figures(self, wall):
        """Redis's CPU over the window (part of the server's) and the
        commands it ran (``INFO commandstats`` deltas: calls, usec)."""
        redis = stats.cpu_seconds(self.redis.proc.pid) - self.redis0
        commands = {}
        for name, (calls, usec) in self.redis.commandstats().items():
            calls0, usec0 = self.commands0.get(name, (0, 0))
            if name != "info" and calls > calls0:
                commands[name] = {"calls": calls - calls0, "usec": usec - usec0}
        return {
            "redis_cpu_s": redis,
            "redis_cpu_pct": round(100 * redis / wall, 1),
            "redis_commands": commands,
        }


class Scraper:
    """Reads ``GET /metrics`` (with the admin secret) every ``every``
    seconds from a thread, as Prometheus would, until ``stop``."""

    def __init__(self, server, every):
        self.server = server
        self.every = every
        self.count = self.failed = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        url = "http://%s:%d/metrics" % (servers.HOST, self.server.http_port)
        headers = {"Authorization": "Bearer %s" % self.server.admin_secret}
        while not self.stopped.wait(self.every):
            try:
                status, _answer = servers.http("GET", url, None, headers)
            except OSError:
                status = None
            if status == 200:
                self.count += 1
            else:
                self.failed += 1

    def stop(self):
        """Stops scraping; returns what it did, to log."""
        self.stopped.set()
        self.thread.join()
        return "%d scrapes, %d failed" % (self.count, self.failed)


class Session:
    """One server instance with its worker processes."""

    def __init__(self, server_name, sub_workers, keep=False, mode=None):
        classes = dict(servers.SERVERS, blaster=servers.BlasterServer)
        workdir = servers.make_workdir(server_name)
        if server_name == "pushi" and servers.PushiServer.node_count > 1:
            self.server = servers.PushiCluster(workdir, servers.PushiServer.node_count)
        else:
            self.server = classes[server_name](workdir)
        # a bench mode (``MODES``): the app's settings (Pushi: set with the
        # admin secret once it runs), the server's environment, a scraper
        mode = mode or {}
        self.settings = mode.get("settings")
        self.server.extra_env = mode.get("env", {})
        self.scrape = mode.get("scrape")
        self.scraper = None
        if self.settings or self.scrape:
            self.server.admin_secret = secrets.token_hex(32)
        self.subs = [procs.WorkerProc("subscriber") for _ in range(sub_workers)]
        self.trigger = procs.WorkerProc("trigger")
        self.keep = keep
        self.leftover = 0
        self.backlog = False
        # source addresses handed out so far (``source_address``)
        self.sources = 0

    def __enter__(self):
        log("starting %s" % self.server.name)
        try:
            self.server.start()
            if self.settings:
                rest(
                    self.server,
                    "PUT",
                    "/apps/%s" % self.server.app["app_id"],
                    {"settings": self.settings},
                    admin=True,
                )
            if self.scrape:
                self.scraper = Scraper(self.server, self.scrape)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        log(
            "%s up: pid %s, http %s, ws %s"
            % (
                self.server.name,
                self.server.pid,
                self.server.http_port,
                self.server.ws_port,
            )
        )
        return self

    def __exit__(self, *exc_info):
        if self.scraper:
            log("GET /metrics: %s" % self.scraper.stop())
        for worker in self.subs + [self.trigger]:
            worker.stop()
        self.server.stop()
        if not self.keep:
            shutil.rmtree(self.server.workdir, ignore_errors=True)
        return False

    @property
    def generators(self):
        """Every load process."""
        return self.subs + [self.trigger]

    def connect(
        self, n, channel=None, prefix=None, sample=0, subscribe=True, node=None
    ):
        """Opens ``n`` subscribers split over the subscriber workers and,
        with ``--nodes``, over the nodes (node 1 gets the first share, as
        round robin would; ``node`` puts them all on that node, 0-based)."""
        ports = getattr(self.server, "ws_ports", [self.server.ws_port])
        if node is not None:
            ports = [ports[node]]
        if len(ports) == 1:
            return self.connect_to(ports[0], n, channel, prefix, sample, subscribe)
        shares = split(n, len(ports))
        samples = (
            split(sample, len(ports)) if sample != "all" else [sample] * len(ports)
        )
        answers = []
        offset = 0
        for port, share, sampled in zip(ports, shares, samples, strict=True):
            answers.append(
                self.connect_to(
                    port, share, channel, prefix, sampled, subscribe, offset
                )
            )
            offset += share
        return {
            "ready": sum(answer["ready"] for answer in answers),
            "failed": sum(answer["failed"] for answer in answers),
            "errors": summed(answers, "errors"),
            "nodes": summed(answers, "nodes"),
            "elapsed": sum(answer["elapsed"] for answer in answers),
        }

    def connect_to(self, port, n, channel, prefix, sample, subscribe, base=0):
        """Opens ``n`` subscribers to ``port`` split over the subscriber
        workers (their channels from ``prefix`` numbered from ``base``).
        The answer's ``nodes`` counts them by the server process that
        holds them (from their socket ids)."""
        shares = split(n, len(self.subs))
        timeout = connect_timeout(n)
        samples = split(sample, len(self.subs)) if sample != "all" else None
        offset = base
        for index, (worker, share) in enumerate(zip(self.subs, shares, strict=True)):
            cmd = {
                "cmd": "connect",
                "port": port,
                "path": self.server.ws_path(),
                "n": share,
                "subscribe": subscribe,
                "sample": "all" if samples is None else samples[index],
                "timeout": timeout,
                "sources": [
                    source_address(self.sources + offset)
                    for offset in range(-(-share // PER_SOURCE))
                ],
                "per_source": PER_SOURCE,
            }
            self.sources += len(cmd["sources"])
            if channel is not None:
                cmd["channel"] = channel
            else:
                cmd["channel_prefix"] = prefix
                cmd["offset"] = offset
            offset += share
            worker.send(cmd)
        answers = [worker.recv(timeout + 60) for worker in self.subs]
        t_start = min(a["t_start"] for a in answers)
        t_end = max(a["t_end"] for a in answers)
        return {
            "ready": sum(a["ready"] for a in answers),
            "failed": sum(a["failed"] for a in answers),
            "errors": summed(answers, "errors"),
            "nodes": summed(answers, "nodes"),
            "elapsed": max(1e-9, t_end - t_start),
        }

    def reset(self, ping=True):
        """Zeroes the subscriber counters (pinging first, where the server
        takes ``pusher:ping``: keeps activity timeouts from firing)."""
        ping = ping and self.server.accepts_ping
        self.leftover, self.backlog = self.quiesce()
        for worker in self.subs:
            worker.send({"cmd": "reset", "ping": ping, "settle": 0.5})
        for worker in self.subs:
            worker.recv(30)

    def sub_stats(self):
        """Sum of the subscribers' counters."""
        answers = [worker.call({"cmd": "stats"}, 30) for worker in self.subs]
        return {
            "frames": sum(a["frames"] for a in answers),
            "last_t": max(a["last_t"] for a in answers),
            "open": sum(a["open"] for a in answers),
            "unexpected_closes": sum(a["unexpected_closes"] for a in answers),
        }

    def samples(self):
        """Everything the sampled subscribers saw."""
        subs = []
        for worker in self.subs:
            subs.extend(worker.call({"cmd": "samples"}, 60)["subs"])
        return subs

    def trigger_phase(
        self,
        channels,
        inflight,
        duration,
        rate=None,
        max_count=None,
        persist=False,
        expected_per_trigger=1,
        max_drain=15.0,
        stall=3.0,
        seq_start=1,
    ):
        """Runs one trigger loop, then waits for the deliveries.

        Returns ``(trigger_answer, delivery_stats, meter_figures)``."""
        cmd = dict(self.server.trigger_spec(persist=persist))
        cmd.update(
            cmd="trigger",
            channels=channels,
            inflight=inflight,
            duration=duration,
            rate=rate,
            max_count=max_count or 10**9,
            seq_start=seq_start,
        )
        meter = Meter(self.server, self.generators)
        answer = self.trigger.call(cmd, duration + 120)
        expected = answer["ok"] * expected_per_trigger
        delivery = self.drain(expected, max_drain, stall)
        figures = meter.stop()
        return answer, delivery, figures

    def drain(self, expected, max_drain, stall):
        """Polls the subscribers until ``expected`` frames were counted, or
        nothing arrived for ``stall`` seconds while the server was idle
        (a busy server may still be building a large batch), or
        ``max_drain`` passes."""
        start = time.monotonic()
        last_frames = -1
        last_change = start
        cpu_at_change = server_cpu_seconds(self.server)
        while True:
            current = self.sub_stats()
            now = time.monotonic()
            if current["frames"] >= expected:
                break
            if current["frames"] != last_frames:
                last_frames = current["frames"]
                last_change = now
                cpu_at_change = server_cpu_seconds(self.server)
            elif now - last_change > stall:
                busy = server_cpu_seconds(self.server) - cpu_at_change
                if busy < IDLE_SHARE * (now - last_change):
                    break
            if now - start > max_drain:
                break
            time.sleep(0.1)
        current["drain_s"] = round(time.monotonic() - start, 2)
        current["expected"] = expected
        current["t_end"] = time.monotonic()
        return current

    def quiesce(self, quiet=1.0, max_wait=30.0):
        """Waits until no frame arrived for ``quiet`` seconds and the server
        is idle, so that a backlog of the previous phase does not count in
        the next one.  Returns the frames that arrived meanwhile."""
        start = time.monotonic()
        first = last = self.sub_stats()["frames"]
        last_change = start
        cpu_at_change = server_cpu_seconds(self.server)
        while time.monotonic() - start < max_wait:
            time.sleep(0.2)
            frames = self.sub_stats()["frames"]
            now = time.monotonic()
            if frames != last:
                last = frames
                last_change = now
                cpu_at_change = server_cpu_seconds(self.server)
            elif now - last_change >= quiet:
                busy = server_cpu_seconds(self.server) - cpu_at_change
                if busy < IDLE_SHARE * (now - last_change):
                    return last - first, False
        return last - first, True


def split(total, parts):
    """Splits ``total`` into ``parts`` near-equal integers."""
    base, extra = divmod(int(total), parts)
    return [base + (1 if index < extra else 0) for index in range(parts)]


def loss_figures(samples, accepted):
    """Lost, duplicate and extra messages over the sampled subscribers, plus
    their delivery latencies (ms summary)."""
    lost = duplicates = extra = 0
    lats = []
    accepted_sets = {channel: set(seqs) for channel, seqs in accepted.items()}
    for sub in samples:
        seen = sub["seqs"]
        seen_set = set(seen)
        wanted = accepted_sets.get(sub["channel"], set())
        lost += len(wanted - seen_set)
        extra += len(seen_set - wanted)
        duplicates += len(seen) - len(seen_set)
        lats.extend(sub["lats"])
    return {
        "sampled_subscribers": len(samples),
        "lost": lost,
        "duplicates": duplicates,
        "unexpected": extra,
        "latency_ms": stats.summarize(lats),
    }


def base_result(session, scenario, variant, **fields):
    """The common head of a result line."""
    result = {
        "scenario": scenario,
        "variant": variant,
        "server": session.server.name,
        "server_version": session.server.version,
    }
    result.update(fields)
    return result


def phase_result(session, scenario, variant, answer, delivery, figures, n_subs):
    """Builds the result of a trigger-plus-delivery phase."""
    samples = session.samples()
    loss = loss_figures(samples, answer["accepted"])
    delivered = delivery["frames"]
    # complete: up to the last frame; incomplete: over the whole window, so
    # that a server that stops delivering is not credited with its early rate
    end = delivery["last_t"] if delivered >= delivery["expected"] else delivery["t_end"]
    span = max(1e-9, end - answer["t0"])
    result = base_result(
        session,
        scenario,
        variant,
        subscribers=n_subs,
        triggers_sent=answer["sent"],
        triggers_ok=answer["ok"],
        trigger_statuses=answer["statuses"],
        trigger_errors=answer["errors"],
        triggers_per_s=round(answer["ok"] / answer["elapsed"], 1),
        http_latency_ms=answer["latency_ms"],
        delivered=delivered,
        expected=delivery["expected"],
        undelivered=max(0, delivery["expected"] - delivered),
        msgs_per_s=round(delivered / span, 1) if delivered else 0.0,
        drain_s=delivery["drain_s"],
        lost_sampled=loss["lost"],
        duplicates_sampled=loss["duplicates"],
        unexpected_sampled=loss["unexpected"],
        sampled_subscribers=loss["sampled_subscribers"],
        latency_ms=loss["latency_ms"],
        unexpected_closes=delivery["unexpected_closes"],
        leftover_frames_before=session.leftover,
    )
    if session.backlog:
        # the previous phase was still being delivered when this one began
        result["previous_backlog"] = True
    if answer.get("first_error_body"):
        result["first_error_body"] = answer["first_error_body"]
    if answer.get("late"):
        result["late_ticks"] = answer["late"]
    result.update(figures)
    result["server_cpu_us_per_delivery"] = (
        round(1e6 * figures["server_cpu_s"] / delivered, 2) if delivered else None
    )
    if "redis_cpu_s" in figures:
        result.update(cluster_figures(session, samples, answer, figures, delivered))
    return result


def cluster_figures(session, samples, answer, figures, delivered):
    """With ``--nodes``: latency on node 1 (where triggers arrive) and on
    the other nodes (cross-node) apart, Redis's CPU per delivery and per
    publish (its process) and its commands per publish (``INFO
    commandstats``)."""
    first = session.server.ws_ports[0]
    published = max(1, answer["ok"])
    commands = figures["redis_commands"]
    return {
        "nodes": len(session.server.ws_ports),
        "latency_node1_ms": stats.summarize(
            [lat for sub in samples if sub["port"] == first for lat in sub["lats"]]
        ),
        "latency_cross_ms": stats.summarize(
            [lat for sub in samples if sub["port"] != first for lat in sub["lats"]]
        ),
        "redis_cpu_us_per_delivery": (
            round(1e6 * figures["redis_cpu_s"] / delivered, 2) if delivered else None
        ),
        "redis_cpu_us_per_publish": round(1e6 * figures["redis_cpu_s"] / published, 1),
        "redis_calls_per_publish": {
            name: round(value["calls"] / published, 2)
            for name, value in commands.items()
        },
        # the publish script's time (the commands it calls are counted
        # apart as well, inside its time: summing them would count twice)
        "redis_evalsha_us_per_publish": round(
            commands.get("evalsha", {}).get("usec", 0) / published, 1
        ),
        "redis_usec_per_call": {
            name: round(value["usec"] / value["calls"], 2)
            for name, value in commands.items()
        },
    }


def sub_workers_for(n, option):
    """Subscriber worker processes for ``n`` sockets."""
    if option:
        return option
    return 1 if n <= 1000 else 2


def fanout(server_name, profile, options):
    """N subscribers on one channel: serial, several in flight, fixed rate;
    after Pushi's, the latency floor at its fixed rate (``floor``)."""
    results = []
    for n in profile["fanout_sizes"]:
        capacity = half_rate = None
        with Session(
            server_name,
            sub_workers_for(n, options.generators),
            options.keep,
            pushi_mode(server_name, options),
        ) as session:
            conn = session.connect(n, channel="fanout", sample=min(SAMPLED, n))
            log("fanout %d: %d ready, %d failed" % (n, conn["ready"], conn["failed"]))
            if conn["ready"] < n:
                results.append(
                    base_result(
                        session,
                        "fanout",
                        "setup",
                        subscribers=n,
                        error="only %d of %d subscribers ready: %s"
                        % (conn["ready"], n, conn["errors"]),
                    )
                )
                continue
            max_count = max(1, MAX_DELIVERIES // n)
            seq = 1
            # warm-up (JIT, caches, allocator), not reported
            session.reset()
            answer, _d, _f = session.trigger_phase(
                ["fanout"],
                1,
                profile["warmup"],
                max_count=max_count,
                expected_per_trigger=n,
                max_drain=profile["max_drain"],
                seq_start=seq,
            )
            seq += answer["sent"] + 1
            variants = [
                ("a-serial", 1, None),
                (
                    "b-inflight%d" % profile["fanout_inflight"],
                    profile["fanout_inflight"],
                    None,
                ),
                ("c-rate", 16, "half"),
            ]
            for variant, inflight, rate in variants:
                if rate == "half":
                    if not capacity:
                        results.append(
                            base_result(
                                session,
                                "fanout",
                                variant,
                                subscribers=n,
                                skipped="no capacity measured in a-serial",
                            )
                        )
                        continue
                    rate = half_rate = max(0.1, 0.5 * capacity / n)
                session.reset()
                answer, delivery, figures = session.trigger_phase(
                    ["fanout"],
                    inflight,
                    profile["duration"],
                    rate=rate,
                    max_count=max_count,
                    expected_per_trigger=n,
                    max_drain=profile["max_drain"],
                    seq_start=seq,
                )
                seq += answer["sent"] + 1
                result = phase_result(
                    session, "fanout", variant, answer, delivery, figures, n
                )
                result["inflight"] = inflight
                if rate:
                    result["target_triggers_per_s"] = round(rate, 1)
                    result["target_msgs_per_s"] = round(rate * n, 1)
                if variant == "a-serial":
                    capacity = result["msgs_per_s"]
                results.append(result)
                emit_progress(result)
        if server_name == "pushi" and half_rate and servers.PushiServer.node_count == 1:
            results.append(floor(n, half_rate, profile, options))
    return results


def trigger(server_name, profile, options):
    """1 subscriber, 8 requests in flight: HTTP trigger throughput (with
    ``--nodes``, triggers to node 1, its subscriber on node 2)."""
    with Session(
        server_name, 1, options.keep, pushi_mode(server_name, options)
    ) as session:
        node = 1 if hasattr(session.server, "ws_ports") else None
        session.connect(1, channel="trigger", sample=1, node=node)
        session.reset()
        session.trigger_phase(["trigger"], 8, profile["warmup"], max_drain=5)
        session.reset()
        answer, delivery, figures = session.trigger_phase(
            ["trigger"],
            8,
            profile["duration"],
            max_drain=profile["max_drain"],
            seq_start=10**7,
        )
        result = phase_result(
            session, "trigger", "inflight8", answer, delivery, figures, 1
        )
        result["inflight"] = 8
        emit_progress(result)
        return [result]


def channels(server_name, profile, options):
    """Sockets each on their own channel, triggers to random channels."""
    n = profile["channels"]
    with Session(server_name, 1, options.keep) as session:
        conn = session.connect(n, prefix="ch-", sample="all")
        log("channels %d: %d ready, %d failed" % (n, conn["ready"], conn["failed"]))
        names = ["ch-%d" % index for index in range(n)]
        session.reset()
        session.trigger_phase(names, 8, profile["warmup"], max_drain=5)
        session.reset()
        answer, delivery, figures = session.trigger_phase(
            names,
            8,
            profile["duration"],
            max_drain=profile["max_drain"],
            seq_start=10**7,
        )
        result = phase_result(
            session, "channels", "random-inflight8", answer, delivery, figures, n
        )
        result["channels"] = n
        result["inflight"] = 8
        emit_progress(result)
        return [result]


#: connections per load process (each is capped at the machine's open
#: files, and one Python loop sets up a few thousand a second)
PER_GENERATOR = 5000
#: connections per source address in 127.0.0.0/8: the kernel's search for
#: a free local port stays short
PER_SOURCE = 2000
#: steps a ``connect`` run opens its connections in (RSS after each)
CONNECT_STEPS = 4
#: sampled subscribers of a ``broadcast`` run (latency and loss)
BROADCAST_SAMPLED = 1000
#: single broadcasts of a ``broadcast`` run (each waited for in full)
SINGLE_BROADCASTS = 3


def source_address(index):
    """The ``index``-th source address in 127.0.0.0/8 from 127.0.0.2 on,
    skipping host parts 0 and 255."""
    index += 1
    block, host = divmod(index, 254)
    host += 1
    middle, third = divmod(block, 256)
    return "127.%d.%d.%d" % (middle % 256, third, host)


def connection_sizes(profile, options, key):
    """The connection counts of a run: ``--connections`` (comma-separated)
    or the profile's."""
    if options.connections:
        return [int(size) for size in str(options.connections).split(",")]
    return [profile[key]]


def connect_timeout(n):
    """Seconds the load processes have to open ``n`` connections between
    them: two minutes, more for counts that take longer at 500 a second."""
    return max(120, n // 500)


def generators_for(n, option):
    """Load processes for ``n`` sockets: ``PER_GENERATOR`` each at most."""
    return max(sub_workers_for(n, option), -(-n // PER_GENERATOR))


def slope(points):
    """The least-squares slope of ``(x, y)`` points (None for fewer than
    two distinct x)."""
    if len(points) < 2:
        return None
    mean_x = sum(x for x, _y in points) / len(points)
    mean_y = sum(y for _x, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _y in points)
    if not spread:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread


def connect(server_name, profile, options):
    """Opens N idle connections in ``CONNECT_STEPS`` steps from several
    load processes and source addresses: the rate of each step, the
    server's RSS after each (memory per connection is the slope, not
    counting the process's start), then the server's CPU over ``idle``
    seconds of the connections pinging as pusher-js does."""
    results = []
    for n in connection_sizes(profile, options, "connections"):
        workers = generators_for(n, options.generators)
        with Session(server_name, workers, options.keep) as session:
            time.sleep(1.0)
            rss_before = server_rss_bytes(session.server)
            points = [(0, rss_before)]
            steps, ready, failed, elapsed, answers = [], 0, 0, 0.0, []
            processes = server_processes(session.server)
            meter = Meter(session.server, session.generators)
            for share in split(n, CONNECT_STEPS):
                cpu_before = server_cpu_seconds(session.server)
                conn = session.connect(share, subscribe=False, channel="none")
                cpu = server_cpu_seconds(session.server) - cpu_before
                answers.append(conn)
                ready += conn["ready"]
                failed += conn["failed"]
                elapsed += conn["elapsed"]
                time.sleep(1.0)
                rss = server_rss_bytes(session.server)
                points.append((ready, rss))
                steps.append(
                    {
                        "connections": ready,
                        "connections_per_s": round(conn["ready"] / conn["elapsed"]),
                        # the server's own cost: the rate also depends on
                        # what else the machine runs
                        "server_cpu_us_per_connection": (
                            round(1e6 * cpu / conn["ready"], 1)
                            if conn["ready"]
                            else None
                        ),
                        "rss_kb": rss // 1024,
                    }
                )
                log(
                    "connect %d: %d open, %d/s, %s us of server CPU each, RSS %d MB"
                    % (
                        n,
                        ready,
                        steps[-1]["connections_per_s"],
                        steps[-1]["server_cpu_us_per_connection"],
                        rss >> 20,
                    )
                )
            figures = meter.stop()
            per_connection = slope(points)
            nodes = pushi_nodes(server_name, summed(answers, "nodes"))
            log("connect %d: per server process %s" % (n, by_node_text(nodes)))
            result = base_result(
                session,
                "connect",
                "idle",
                connections=n,
                ready=ready,
                failed=failed,
                errors=summed(answers, "errors"),
                generators=workers,
                source_addresses=session.sources,
                connections_by_process=by_node(nodes),
                server_processes=by_role(
                    server_processes(session.server), processes, figures["wall_s"]
                ),
                connect_s=round(elapsed, 3),
                connections_per_s=round(ready / max(1e-9, elapsed), 1),
                steps=steps,
                rss_before_kb=rss_before // 1024,
                rss_after_kb=points[-1][1] // 1024,
                rss_per_connection_kb=(
                    round(per_connection / 1024, 2) if per_connection else None
                ),
                server_cpu_us_per_connection=(
                    round(1e6 * figures["server_cpu_s"] / ready, 1) if ready else None
                ),
            )
            result.update(figures)
            idle = options.idle if options.idle is not None else profile["idle"]
            if idle and ready:
                result.update(idle_figures(session, idle, ready))
            results.append(result)
            emit_progress(result)
    return results


def pushi_nodes(server_name, nodes):
    """``nodes`` for Pushi, whose socket ids name their process; nothing
    for a peer (soketi's ids have a dot too, but name no process)."""
    return nodes if server_name == "pushi" else {}


def by_node(nodes):
    """Connections per server process (``Session.connect``'s ``nodes``),
    most first."""
    return sorted(nodes.values(), reverse=True)


def by_node_text(nodes):
    """``by_node`` for the log: the counts, and their spread."""
    counts = by_node(nodes)
    if not counts:
        return "none"
    return "%s (%d processes, least %d, most %d)" % (
        " ".join(str(count) for count in counts),
        len(counts),
        counts[-1],
        counts[0],
    )


def idle_figures(session, duration, ready):
    """The server's CPU while ``ready`` connections sit idle for
    ``duration`` seconds, pinging as pusher-js does (and each of its
    processes' apart)."""
    log("idle: %d connections for %ss" % (ready, duration))
    processes = server_processes(session.server)
    meter = Meter(session.server, session.generators)
    for worker in session.subs:
        worker.send({"cmd": "idle", "duration": duration})
    answers = [worker.recv(duration + 60) for worker in session.subs]
    figures = meter.stop()
    roles = by_role(server_processes(session.server), processes, figures["wall_s"])
    still_open = sum(answer["open"] for answer in answers)
    reasons = summed(answers, "close_reasons")
    return {
        "idle_s": figures["wall_s"],
        "idle_pings": sum(answer["pings"] for answer in answers),
        "idle_ping_interval_s": answers[0]["interval"],
        "idle_server_cpu_pct": figures["server_cpu_pct"],
        "idle_server_cpu_pct_per_20k": round(
            figures["server_cpu_pct"] * 20000 / ready, 2
        ),
        "idle_open_after": still_open,
        "idle_close_reasons": reasons,
        "idle_server_processes": roles,
    }


def broadcast(server_name, profile, options):
    """N subscribers on one channel: single events to all of them, each
    waited for in full (publish to the last delivery, none lost), then a
    steady rate of such broadcasts (latency percentiles over
    ``BROADCAST_SAMPLED`` subscribers, loss over all)."""
    results = []
    for n in connection_sizes(profile, options, "broadcast"):
        workers = generators_for(n, options.generators)
        with Session(server_name, workers, options.keep) as session:
            cpu_before = server_cpu_seconds(session.server)
            conn = session.connect(
                n, channel="broadcast", sample=min(BROADCAST_SAMPLED, n)
            )
            ready = conn["ready"]
            # connecting and subscribing, the server's own cost
            subscribe_cpu_us = (
                round(
                    1e6 * (server_cpu_seconds(session.server) - cpu_before) / ready, 1
                )
                if ready
                else None
            )
            conn["nodes"] = pushi_nodes(server_name, conn["nodes"])
            log(
                "broadcast %d: %d ready, %d failed, %d/s, %s us of server CPU each;"
                " per server process %s"
                % (
                    n,
                    ready,
                    conn["failed"],
                    ready / conn["elapsed"] if conn["elapsed"] else 0,
                    subscribe_cpu_us,
                    by_node_text(conn["nodes"]),
                )
            )
            singles = []
            for index in range(SINGLE_BROADCASTS):
                session.reset(ping=False)
                answer, delivery, _f = session.trigger_phase(
                    ["broadcast"],
                    1,
                    10.0,
                    max_count=1,
                    expected_per_trigger=ready,
                    max_drain=profile["max_drain"],
                    stall=3.0,
                    seq_start=10**6 + index,
                )
                single = {
                    "delivered": delivery["frames"],
                    "lost": max(0, ready * answer["ok"] - delivery["frames"]),
                    "publish_ok": answer["ok"],
                    "last_delivery_ms": (
                        round(1000 * (delivery["last_t"] - answer["t0"]), 1)
                        if delivery["frames"]
                        else None
                    ),
                }
                singles.append(single)
                log("broadcast %d: single %s" % (n, single))
            rate = options.rate or profile["broadcast_rate"]
            session.reset(ping=False)
            processes = server_processes(session.server)
            answer, delivery, figures = session.trigger_phase(
                ["broadcast"],
                4,
                options.duration or profile["duration"],
                rate=rate,
                expected_per_trigger=ready,
                max_drain=profile["max_drain"],
                seq_start=2 * 10**6,
            )
            result = phase_result(
                session, "broadcast", "one-channel", answer, delivery, figures, n
            )
            timed = [s["last_delivery_ms"] for s in singles if s["publish_ok"]]
            result.update(
                connections=n,
                ready=ready,
                failed=conn["failed"],
                errors=conn["errors"],
                subscribed_per_s=(
                    round(ready / conn["elapsed"]) if conn["elapsed"] else None
                ),
                server_cpu_us_per_subscriber=subscribe_cpu_us,
                generators=workers,
                source_addresses=session.sources,
                connections_by_process=by_node(conn["nodes"]),
                server_processes=by_role(
                    server_processes(session.server), processes, figures["wall_s"]
                ),
                singles=singles,
                last_delivery_ms=max(timed) if None not in timed and timed else None,
                single_lost=sum(s["lost"] for s in singles),
                p99_ms=result["latency_ms"]["p99"],
                rate_per_s=rate,
            )
            results.append(result)
            emit_progress(result)
    return results


def persist(server_name, profile, options):
    """Persisted triggers/s with some events already stored (Pushi only),
    with each of ``persist_inflight`` requests in flight: a fresh server
    per stored count and in-flight count, so that each starts from the
    same store."""
    server_class = servers.SERVERS[server_name]
    if not server_class.supports_persist:
        return []
    results = []
    for stored in profile["persist_stored"]:
        for inflight in profile["persist_inflight"]:
            result = persist_run(server_name, profile, options, stored, inflight)
            results.append(result)
            emit_progress(result)
    return results


def persist_run(server_name, profile, options, stored, inflight):
    """One row of ``persist``: ``stored`` events preloaded, then the same
    triggers unpersisted, persisted and unpersisted again, ``inflight`` at
    a time."""
    session = Session(server_name, 1, options.keep)
    session.server.preload = (stored, "persist")
    with session:
        session.connect(1, channel="persist", sample=1)
        preloaded = getattr(session.server, "preloaded", 0)
        how = "store"
        if preloaded < stored:
            how = "http"
            log("persist: preloading %d events over HTTP" % stored)
            pre, _d, _f = session.trigger_phase(
                ["persist"],
                16,
                profile["preload_time"],
                max_count=stored - preloaded,
                persist=True,
                max_drain=5,
                stall=1.0,
            )
            preloaded += pre["ok"]
            if preloaded < stored:
                log("persist: only %d of %d preloaded" % (preloaded, stored))

        # the same triggers unpersisted just before and just after, on
        # this server: the ratio to their mean holds while the machine's
        # speed drifts (it moves more between scenarios than within one)
        def phase(persist, seq_start):
            session.reset()
            return session.trigger_phase(
                ["persist"],
                inflight,
                profile["duration"],
                persist=persist,
                max_drain=profile["max_drain"],
                seq_start=seq_start,
            )

        before, _delivery, before_figures = phase(False, 10**8)
        # the samples are read before the next phase resets them
        result = phase_result(
            session,
            "persist",
            "stored%d-inflight%d" % (stored, inflight),
            *phase(True, 2 * 10**8),
            1,
        )
        after, _delivery, after_figures = phase(False, 3 * 10**8)
        plain = [answer["ok"] / answer["elapsed"] for answer in (before, after)]
        result["plain_triggers_per_s"] = [round(rate, 1) for rate in plain]
        result["ratio_to_plain"] = round(result["triggers_per_s"] * 2 / sum(plain), 3)
        # what storing adds to a trigger, in the server's CPU (its loop and
        # the events writer): unlike the ratio, it does not fall when plain
        # triggers get cheaper
        plain_cpu = (
            before_figures["server_cpu_s"] + after_figures["server_cpu_s"]
        ) / max(1, before["ok"] + after["ok"])
        result["plain_server_cpu_us_per_trigger"] = round(1e6 * plain_cpu, 2)
        if result["server_cpu_us_per_delivery"] is not None:
            result["persisted_extra_cpu_us"] = round(
                result["server_cpu_us_per_delivery"] - 1e6 * plain_cpu, 2
            )
        result["stored_before"] = preloaded
        result["preloaded_through"] = how
        result["inflight"] = inflight
    return result


def generator(server_name, profile, options):
    """The generator's own ceiling: a stand-in server (``blaster``) writes
    messages as fast as it can to N counting subscribers, one frame per
    write and then 16 frames per write.  With ``--rate``, also the latency
    floor at that many delivered messages/s to each size of
    ``--subscribers`` (see ``blast``)."""
    ceiling_n = profile["fanout_sizes"][0] if options.quick else 1000
    phases = [
        (ceiling_n, workers, batch, None) for workers in (1, 2) for batch in (1, 16)
    ]
    if options.rate:
        phases += [
            (size, sub_workers_for(size, options.generators), 1, options.rate / size)
            for size in profile["fanout_sizes"]
        ]
    results = []
    for (n, workers), group in itertools.groupby(phases, lambda phase: phase[:2]):
        with Session("blaster", workers, options.keep) as session:
            conn = session.connect(n, channel="fanout", sample=min(SAMPLED, n))
            log("generator %d: %d ready" % (n, conn["ready"]))
            for _n, _workers, batch, rate in group:
                result = blast(session, n, batch, rate, profile)
                results.append(result)
                emit_progress(result)
    return results


def blast(session, n, batch, rate, profile, scenario="generator", variant=None):
    """One phase of the stand-in server: ``batch`` frames per write as fast
    as it can, or with ``rate`` (events/s) one frame per subscriber per
    event, when due: the cheapest a server can publish at that rate, so the
    latency its subscribers see is the floor of this machine and generator
    for a server's ``c-rate`` at the same ``target_msgs_per_s``."""
    workers = len(session.subs)
    session.reset()
    meter = Meter(session.server, session.generators)
    answer = session.server.blast(
        duration=profile["duration"],
        batch=batch,
        count=MAX_DELIVERIES // n,
        rate=rate,
    )
    delivery = session.drain(answer["frames"], profile["max_drain"], 2.0)
    figures = meter.stop()
    answer.update(
        sent=answer["messages"],
        ok=answer["messages"],
        statuses={},
        errors={},
        latency_ms={},
    )
    if variant is None:
        variant = (
            "rate%g-workers%d" % (rate * n, workers)
            if rate
            else "batch%d-workers%d" % (batch, workers)
        )
    result = phase_result(session, scenario, variant, answer, delivery, figures, n)
    # a stand-in has no HTTP triggers
    for key in (
        "triggers_sent",
        "triggers_ok",
        "trigger_statuses",
        "trigger_errors",
        "triggers_per_s",
        "http_latency_ms",
    ):
        result.pop(key, None)
    result["frames_per_write"] = batch
    result["subscriber_workers"] = workers
    if rate:
        result["target_triggers_per_s"] = round(rate, 1)
        result["target_msgs_per_s"] = round(rate * n, 1)
    return result


def floor(n, target, profile, options):
    """The ``floor`` cell of a fan-out's c-rate row: the stand-in server at
    Pushi's c-rate ``target`` (events/s) to ``n`` subscribers."""
    with Session(
        "blaster", sub_workers_for(n, options.generators), options.keep
    ) as session:
        conn = session.connect(n, channel="fanout", sample=min(SAMPLED, n))
        if conn["ready"] < n:
            result = base_result(
                session,
                "fanout",
                "c-rate",
                subscribers=n,
                error="only %d of %d subscribers ready" % (conn["ready"], n),
            )
        else:
            result = blast(session, n, 1, target, profile, "fanout", "c-rate")
    result.update(server="floor", server_version="stand-in")
    emit_progress(result)
    return result


def emit_progress(result):
    """A one-line summary on stderr while the run goes on."""
    keys = ("msgs_per_s", "triggers_per_s", "connections_per_s", "ratio_to_plain")
    figures = ", ".join("%s=%s" % (k, result[k]) for k in keys if k in result)
    log(
        "%s %s %s: %s, server %s%%, generator %s%%, other %s%%%s"
        % (
            result["server"],
            result["scenario"],
            result["variant"],
            figures,
            result.get("server_cpu_pct"),
            result.get("generator_cpu_pct"),
            result.get("other_cpu_pct"),
            " GENERATOR-BOUND" if result.get("generator_bound") else "",
        )
    )


#: the attacks of ``--scenario abuse`` in the order they run, with what
#: each sends (the unit of its count)
ATTACKS = {
    "console": ("text frames on /console before any sign-in", "frames"),
    "ping": ("WebSocket ping frames on one socket", "pings"),
    "pusher-ping": ("pusher:ping messages on one socket", "messages"),
    "rest-pipeline": ("unsigned POSTs pipelined on one REST connection", "requests"),
    "cache": (
        "10 KB publishes to 100 cache- channels each (20,000 in turn), as fast "
        "as answered",
        "publishes",
    ),
    "personal": (
        "personal-channel subscribe/unsubscribe, large stored history",
        "messages",
    ),
    "join-storm": ("2,000 joins of one channel, subscription_count_events on", "joins"),
    "continuation": ("empty continuation frames of one message", "frames"),
    "conn-flood": ("connections up to the fd limit", "connections"),
    "publish-flood": (
        "the attacker app's own signed publishes as fast as answered (4 at "
        "once), with max_backend_events_per_second set",
        "publishes",
    ),
}
#: publishes per second of the victim app
VICTIM_RATE = 50.0
#: the victim's p99 (ms) that every attack should leave it under
VICTIM_GOAL_MS = 100.0
#: cache channels the attacker publishes to, in turn, so many in each
#: publish (Pusher's limit), and the size of its data
CACHE_CHANNELS = 20000
CACHE_PER_PUBLISH = 100
CACHE_PAD = 10000
#: the attacker's max_backend_events_per_second in the publish flood, and
#: its publishes in flight
FLOOD_RATE = 100
FLOOD_INFLIGHT = 4
#: sockets of the join storm
STORM_JOINS = 2000
#: channels the abusive user keeps (the first holds the stored history)
PERSONAL_CHANNELS = 50


class RssSampler:
    """Samples a process's RSS (``VmRSS`` of ``/proc/<pid>/status``) on a
    thread of this process until stopped; keeps the peak."""

    def __init__(self, pid, every=0.05):
        self.pid = pid
        self.every = every
        self.before = self.peak = stats.status_kb(pid)
        self.end = None
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self):
        """Samples until stopped."""
        while not self.stopped.wait(self.every):
            self.peak = max(self.peak, stats.status_kb(self.pid))

    def stop(self):
        """Stops sampling; records the RSS at the end."""
        self.stopped.set()
        self.thread.join()
        self.end = stats.status_kb(self.pid)
        self.peak = max(self.peak, self.end)


def rest(server, method, path, body=None, app=None, admin=False):
    """One request to the server's REST port, signed with ``app``'s
    credentials or carrying the admin secret; returns the JSON answer and
    raises on anything but 2xx."""
    data = json.dumps(body) if body is not None else None
    headers = {"Content-Type": "application/json"}
    target = path
    if admin:
        headers["Authorization"] = "Bearer %s" % server.admin_secret
    else:
        query = wire.signed_query(app["key"], app["secret"], method, path, data)
        target = "%s?%s" % (path, query)
    status, answer = servers.http(
        method,
        "http://%s:%d%s" % (servers.HOST, server.http_port, target),
        data,
        headers,
    )
    if not 200 <= status < 300:
        raise RuntimeError("%s %s: %d %s" % (method, path, status, answer[:200]))
    return json.loads(answer or b"{}")


def attack_command(attack, server, app, duration, profile):
    """Sets the attacker app up for ``attack`` and returns the command of
    its attacker process: ``(module, command)``."""
    if attack == "cache":
        command = dict(
            server.trigger_spec(),
            cmd="trigger",
            app_id=app["app_id"],
            key=app["key"],
            secret=app["secret"],
            channels=["cache-abuse-%d" % index for index in range(CACHE_CHANNELS)],
            per_request=CACHE_PER_PUBLISH,
            pad=CACHE_PAD,
            inflight=1,
            duration=duration,
            request_timeout=10,
        )
        return "bench.worker", command
    if attack == "publish-flood":
        rest(
            server,
            "PUT",
            "/apps/%s" % app["app_id"],
            {"settings": {"max_backend_events_per_second": FLOOD_RATE}},
            admin=True,
        )
        command = dict(
            server.trigger_spec(),
            cmd="trigger",
            app_id=app["app_id"],
            key=app["key"],
            secret=app["secret"],
            channels=["flood"],
            inflight=FLOOD_INFLIGHT,
            duration=duration,
            request_timeout=10,
        )
        return "bench.worker", command
    command = {
        "cmd": "attack",
        "attack": attack,
        "duration": duration,
        "ws_port": server.ws_port,
        "http_port": server.http_port,
        "app_id": app["app_id"],
        "key": app["key"],
        "secret": app["secret"],
    }
    if attack == "personal":
        server.preload_store(profile["personal_stored"], "history", app["app_id"])
        for index in range(PERSONAL_CHANNELS):
            event = "history-%d" % index if index else "history"
            rest(
                server,
                "POST",
                "/apps/%s/subscribe" % app["app_id"],
                {"user_id": "abuser", "event": event},
                app=app,
            )
        command["user_id"] = "abuser"
    elif attack == "join-storm":
        rest(
            server,
            "PUT",
            "/apps/%s" % app["app_id"],
            {"settings": {"subscription_count_events": True}},
            admin=True,
        )
        command.update(channel="storm", connections=STORM_JOINS)
    elif attack == "conn-flood":
        # the server inherits this process's limit: reach it, and stop at
        # the attacker's own (it needs a few descriptors of its own)
        command["connections"] = resource.getrlimit(resource.RLIMIT_NOFILE)[1] - 64
    return "bench.attacker", command


def abuse(server_name, profile, options):
    """A victim app's subscriber and publisher while another app's client
    attacks the server, one attack at a time, each on a fresh server (and a
    baseline with no attack): the victim's publish-to-delivery latency and
    losses, the server's RSS, how often the server cut the attacker off.
    Pushi only: the attacks use its console, admin secret and personal
    channels."""
    if server_name != "pushi":
        log("abuse: Pushi only, skipping %s" % server_name)
        return []
    attacks = getattr(options, "attacks", None)
    attacks = attacks.split(",") if attacks else list(ATTACKS)
    duration = options.duration or profile["abuse_duration"]
    results = []
    for attack in ["baseline"] + attacks:
        log("abuse: %s for %g s" % (attack, duration))
        try:
            result = abuse_row(attack, duration, profile, options)
        except KeyboardInterrupt:
            raise
        except Exception as exception:  # report and go on
            result = {
                "scenario": "abuse",
                "variant": attack,
                "server": server_name,
                "error": "%s: %s" % (type(exception).__name__, exception),
            }
        results.append(result)
        if "error" in result:
            log("abuse %s: %s" % (attack, result["error"]))
        else:
            log(
                "abuse %s: victim p50 %s p99 %s ms, %d/%d delivered, RSS %d -> %d KB, "
                "attacker cut off %s times"
                % (
                    attack,
                    result["latency_ms"]["p50"],
                    result["latency_ms"]["p99"],
                    result["delivered"],
                    result["expected"],
                    result["rss_before_kb"],
                    result["rss_peak_kb"],
                    result.get("cut_offs"),
                )
            )
    return results


def abuse_row(attack, duration, profile, options):
    """One row of ``abuse``: a fresh server, the victim subscribed, the
    attack started, the victim publishing at ``VICTIM_RATE`` from shortly
    after until the attack ends, then its deliveries drained."""
    session = Session("pushi", 1, options.keep)
    session.server.admin_secret = secrets.token_hex(32)
    with session:
        server = session.server
        app = server.create_app("attacker")
        module = command = None
        if attack != "baseline":
            module, command = attack_command(attack, server, app, duration, profile)
        conn = session.connect(1, channel="victim", sample="all")
        if conn["ready"] < 1:
            raise RuntimeError("the victim could not subscribe: %s" % conn["errors"])
        session.reset()
        attacker = procs.WorkerProc("attacker", module) if module else None
        sampler = RssSampler(server.pid)
        try:
            generators = session.generators + ([attacker] if attacker else [])
            meter = Meter(server, generators)
            if attacker:
                attacker.send(command)
            # the attack is under way before the first publish
            lead = min(0.5, duration / 4)
            time.sleep(lead)
            publishing = duration - lead
            # every publish due while the attack lasts, each stamped with
            # when it was due: those a stalled server held up go out late
            # (within the drain time) and their wait counts in the latency
            expected = math.ceil(publishing * VICTIM_RATE - 1e-9)
            trigger = dict(
                server.trigger_spec(),
                cmd="trigger",
                channels=["victim"],
                inflight=16,
                rate=VICTIM_RATE,
                stamp="due",
                max_count=expected,
                duration=publishing + profile["abuse_drain"],
                request_timeout=profile["abuse_drain"],
            )
            answer = session.trigger.call(trigger, duration + 120)
            delivery = session.drain(answer["ok"], profile["abuse_drain"], 2.0)
            report = attacker.recv(duration + 60) if attacker else {}
            figures = meter.stop()
        finally:
            sampler.stop()
            if attacker:
                attacker.stop()
        if "error" in report:
            raise RuntimeError("attacker: %s" % report["error"])
        seen = set()
        lats = []
        for sub in session.samples():
            seen.update(sub["seqs"])
            lats.extend(sub["lats"])
        latency = stats.summarize(lats)
        result = base_result(
            session,
            "abuse",
            attack,
            attack_s=duration,
            victim_rate=VICTIM_RATE,
            expected=expected,
            delivered=len(seen),
            lost=max(0, expected - len(seen)),
            latency_ms=latency,
            victim_p99_ms=latency["p99"],
            victim_goal_met=latency["p99"] is not None
            and latency["p99"] < VICTIM_GOAL_MS
            and len(seen) >= expected,
            publishes_sent=answer["sent"],
            publish_statuses=answer["statuses"],
            publish_errors=answer["errors"],
            publish_latency_ms=answer["latency_ms"],
            victim_closes=delivery["unexpected_closes"],
            rss_before_kb=sampler.before,
            rss_peak_kb=sampler.peak,
            rss_end_kb=sampler.end,
        )
        if attack in ("cache", "publish-flood"):
            report = {
                "units_sent": report["sent"],
                "answered": report["ok"],
                "statuses": report["statuses"],
                "cut_offs": report["reconnects"],
                "errors": report["errors"],
            }
            if attack == "publish-flood":
                # the server's defence here is the 429, not a cut connection
                report["cut_offs"] = report["statuses"].get("429", 0)
        elif attack in ("join-storm", "conn-flood"):
            report["units_sent"] = report["connected"]
        if attacker:
            result["cut_offs"] = report["cut_offs"]
            result["attacker"] = report
        result.update(figures)
        return result


#: ``--recovery`` and ``--metrics``: what each of their modes changes on
#: Pushi: its app's ``settings``, its environment (``env``), or a scrape of
#: ``GET /metrics`` every ``scrape`` seconds while the scenario runs
MODES = {
    "recovery": {
        "on": {"settings": {"recovery_history": 100}},
        "off": {"settings": {"recovery_history": 0}},
    },
    "metrics": {
        "on": {"scrape": 1.0},
        "off": {"env": {"PUSHI_METRICS": "off"}},
    },
}

#: the scenarios ``--recovery`` and ``--metrics`` run once per mode
MODE_SCENARIOS = ("fanout", "trigger")


def pushi_mode(server_name, options):
    """What this run's mode (``options.mode``: ``(kind, name)``, set by the
    command line) changes: Pushi only, else nothing."""
    mode = getattr(options, "mode", None)
    if server_name != "pushi" or mode is None:
        return {}
    kind, name = mode
    return MODES[kind][name]


class JsonSocket:
    """A blocking WebSocket client of JSON messages (the recovery scenario's
    subscriber: one socket, every message read)."""

    def __init__(self, port, path, timeout=30):
        self.sock = socket.create_connection((servers.HOST, port), timeout=timeout)
        self.sock.sendall(wire.handshake_request(servers.HOST, port, path))
        head = b""
        while b"\r\n\r\n" not in head:
            data = self.sock.recv(4096)
            if not data:
                raise ConnectionError("closed during the upgrade")
            head += data
        self.buffer = bytearray(head.split(b"\r\n\r\n", 1)[1])
        self.pending = []

    def send(self, message):
        self.sock.sendall(wire.encode_frame(json.dumps(message)))

    def recv(self):
        while not self.pending:
            frames, used = wire.parse_frames(self.buffer)
            del self.buffer[:used]
            self.pending.extend(
                json.loads(payload)
                for _fin, opcode, payload in frames
                if opcode == websocket.OP_TEXT
            )
            if not self.pending:
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("closed")
                self.buffer += data
        return self.pending.pop(0)

    def subscribe(self, channel, since=None):
        """Subscribes; returns the subscription data (a dict)."""
        data = {"channel": channel}
        if since is not None:
            data["since"] = since
        self.send({"event": "pusher:subscribe", "data": data})
        while True:
            message = self.recv()
            if message.get("event") == "pusher_internal:subscription_succeeded":
                return json.loads(message["data"])

    def close(self):
        self.sock.close()


def recover(server_name, profile, options):
    """The time a client that missed ``RECOVER_MISSED`` events takes to get
    them back: subscribe, note the position, disconnect, the events
    published, then from sending the subscribe with ``since`` to the last
    missed event received.  Pushi only (its recovery)."""
    if server_name != "pushi":
        log("recover: Pushi only, skipping %s" % server_name)
        return []
    rounds = profile["recover_rounds"]
    with Session("pushi", 1, options.keep) as session:
        server = session.server
        times, recovered = recover_rounds(server, server, rounds)
        result = base_result(
            session,
            "recover",
            "%d-missed" % RECOVER_MISSED,
            missed=RECOVER_MISSED,
            rounds=rounds,
            recovered_rounds=recovered,
            recover_ms=stats.summarize(times),
        )
        result["recover_p50_ms"] = result["recover_ms"]["p50"]
    log(
        "recover %d missed: p50 %s ms, p99 %s ms, %d of %d rounds recovered"
        % (
            RECOVER_MISSED,
            result["recover_ms"]["p50"],
            result["recover_ms"]["p99"],
            recovered,
            rounds,
        )
    )
    return [result]


#: the events a client misses in the ``recover`` scenario
RECOVER_MISSED = 100


def recover_rounds(publisher, receiver, rounds):
    """``rounds`` recoveries of ``RECOVER_MISSED`` events published through
    ``publisher``, recovered on ``receiver`` (the same server, or another
    node): the times (seconds) and how many rounds recovered all."""
    app = publisher.app
    path = "/apps/%s/batch_events" % app["app_id"]
    times = []
    recovered = 0
    for _round in range(rounds):
        client = JsonSocket(publisher.ws_port, publisher.ws_path())
        client.recv()
        state = client.subscribe("recover")
        since = {"epoch": state["epoch"], "offset": state["offset"]}
        client.close()
        for first in range(0, RECOVER_MISSED, 10):
            batch = [
                {"name": "missed", "channel": "recover", "data": str(number)}
                for number in range(first, min(first + 10, RECOVER_MISSED))
            ]
            rest(publisher, "POST", path, {"batch": batch}, app=app)
        client = JsonSocket(receiver.ws_port, receiver.ws_path())
        client.recv()
        started = time.perf_counter()
        state = client.subscribe("recover", since)
        received = 0
        while state.get("recovered") and received < RECOVER_MISSED:
            if client.recv().get("event") == "missed":
                received += 1
        times.append(time.perf_counter() - started)
        recovered += received == RECOVER_MISSED
        client.close()
    return times, recovered


SCENARIOS = {
    "fanout": fanout,
    "trigger": trigger,
    "channels": channels,
    "connect": connect,
    "broadcast": broadcast,
    "persist": persist,
    "recover": recover,
    "abuse": abuse,
}

#: scenarios that run only when named (not in the default run)
OPT_IN = {"abuse", "broadcast"}

#: scenarios that measure the bench itself, run once and not per server
SELF_SCENARIOS = {"generator": generator}
