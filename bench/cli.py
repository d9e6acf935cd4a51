"""Command line of ``scripts/bench``: selects servers and scenarios, runs
them, prints one JSON line per result, then ratios and a markdown table."""

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time

from . import scenarios, servers
from .scenarios import log

#: the headline figure of each scenario, and whether higher is better
HEADLINE = {
    "fanout": ("msgs_per_s", True),
    "trigger": ("triggers_per_s", True),
    "channels": ("msgs_per_s", True),
    "connect": ("connections_per_s", True),
    "broadcast": ("last_delivery_ms", False),
    # the ratio to the same triggers unpersisted on the same server: the
    # figure that holds while the machine's load moves
    "persist": ("ratio_to_plain", True),
    "abuse": ("victim_p99_ms", False),
    "recover": ("recover_p50_ms", False),
}
#: CPU used by processes outside the bench above this (% of one core) is
#: flagged: the figures of that row were measured on a busy machine
CONTENDED_PCT = 25.0
SECONDARY = {
    "fanout": ("server_cpu_us_per_delivery", False),
    "channels": ("server_cpu_us_per_delivery", False),
    "connect": ("rss_per_connection_kb", False),
    "broadcast": ("p99_ms", False),
}


def parse_args(argv):
    """Parses the command line."""
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Benchmarks Pushi against its peers over loopback.",
    )
    parser.add_argument(
        "--server",
        default=None,
        help="comma-separated: pushi,soketi,original (default: every installed one)",
    )
    parser.add_argument(
        "--scenario",
        default=None,
        help="comma-separated: %s (default: all of these), or abuse (a "
        "victim's latency while another client attacks Pushi: see --attacks), "
        "or broadcast (N subscribers on one channel: single events to all, "
        "then a steady --rate of them), "
        "or generator (the load generator's own ceiling, against a stand-in "
        "server)" % ",".join(default_scenarios()),
    )
    parser.add_argument(
        "--attacks",
        default=None,
        help="with --scenario abuse: comma-separated, some of %s (default: "
        "all; --duration sets the seconds of each, default 10, quick 5)"
        % ",".join(scenarios.ATTACKS),
    )
    parser.add_argument("--quick", action="store_true", help="small N, ~1-2 minutes")
    parser.add_argument(
        "--install-peers",
        action="store_true",
        help="install soketi and the original Pushi into .bench/ first",
    )
    parser.add_argument(
        "--markdown", action="store_true", help="print a markdown table at the end"
    )
    parser.add_argument(
        "--duration", type=float, default=None, help="seconds per load phase"
    )
    parser.add_argument(
        "--generators",
        type=int,
        default=None,
        help="the load generator's subscriber processes (default: 1 up to "
        "1,000 sockets, else 2)",
    )
    parser.add_argument(
        "--connections",
        default=None,
        help="with --scenario connect or broadcast: comma-separated "
        "connection counts (default 5,000; quick 1,000), up to the server's "
        "cap (Pushi's at a 20,000 open-files limit: 18,720 a process, so "
        "100,000 needs --workers 6), from one load process per 5,000 and "
        "one source address per 2,000",
    )
    parser.add_argument(
        "--idle",
        type=float,
        default=None,
        help="with --scenario connect: seconds of idle connections pinging as "
        "pusher-js does, the server's CPU measured (default 60, quick 10; 0: "
        "none)",
    )
    parser.add_argument(
        "--subscribers",
        default=None,
        help="comma-separated fan-out sizes (default 1000,5000; quick 200,1000)",
    )
    parser.add_argument(
        "--inflight",
        default=None,
        help="with --scenario persist: comma-separated counts of requests "
        "in flight, a row each (default 8,64)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run everything N times, servers alternated, and report for each "
        "row the run with the median headline figure (default 1)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="with --scenario broadcast: broadcasts per second in the steady "
        "phase (default 1, quick 2); with --scenario generator: also deliver "
        "this many msgs/s from "
        "the stand-in server to each --subscribers size, one frame per "
        "subscriber per event (the latency floor of this machine and "
        "generator at a server's c-rate)",
    )
    for kind, modes in (
        ("recovery", "Pushi's app with its recovery history on (100) or off (0)"),
        (
            "metrics",
            "Pushi with GET /metrics scraped every second (on) or with "
            "PUSHI_METRICS=off",
        ),
    ):
        parser.add_argument(
            "--" + kind,
            default=None,
            help="comma-separated on,off: run the %s scenarios once per mode, %s "
            "(with --repeat, the modes' order alternates); default: once, as "
            "the server is" % (",".join(scenarios.MODE_SCENARIOS), modes),
        )
    parser.add_argument(
        "--workers",
        default=None,
        help="comma-separated PUSHI_WORKERS counts (e.g. 1,2): run every "
        "scenario on Pushi once per count, the server's CPU and memory "
        "those of all its processes",
    )
    parser.add_argument(
        "--nodes",
        default=None,
        help="comma-separated node counts (e.g. 1,2): run every scenario on "
        "Pushi once per count; 1 is the single process, N > 1 starts one "
        "redis-server and N nodes with PUSHI_REDIS_URL (subscribers spread "
        "over the nodes, triggers through node 1; the server's CPU that of "
        "every node and Redis), rows labelled nodes=N and ratios to nodes=1",
    )
    parser.add_argument("--out", default=None, help="also append JSON lines here")
    parser.add_argument(
        "--keep", action="store_true", help="keep the servers' temp dirs and logs"
    )
    options = parser.parse_args(argv)
    options.attempt = 0  # the repeat running (``main`` counts)
    return options


def default_scenarios():
    """The scenarios run when none is named."""
    return [name for name in scenarios.SCENARIOS if name not in scenarios.OPT_IN]


def machine():
    """A description of the machine for the report."""
    model = "?"
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    node = "?"
    try:
        node = subprocess.run(
            ["node", "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "loadavg_at_start": os.getloadavg()[0],
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "node": node or "?",
        "kernel": platform.release(),
    }


def select_servers(option):
    """The servers to run: those asked for, or every installed one."""
    names = option.split(",") if option else list(servers.SERVERS)
    chosen = []
    for name in names:
        name = name.strip()
        if name not in servers.SERVERS:
            raise SystemExit(
                "unknown server %r (have %s)" % (name, list(servers.SERVERS))
            )
        server = servers.SERVERS[name](None)
        if server.available():
            chosen.append(name)
        elif option:
            raise SystemExit("server %r is not installed (try --install-peers)" % name)
        else:
            log("skipping %s: not installed" % name)
    return chosen


def result_key(result):
    """What makes two results comparable across servers."""
    size = result.get("subscribers") or result.get("connections") or ""
    return "%s/%s/%s" % (result["scenario"], result["variant"], size)


def medians(results):
    """One result per row and server from repeated runs: the run whose
    headline figure is the median (lower middle of an even count), so that
    every figure of a cell comes from one run; ``runs`` lists each run's
    headline.  A scenario that failed in some runs keeps its successes; an
    error is kept only where nothing succeeded."""
    groups = {}
    for result in results:
        groups.setdefault((result_key(result), result["server"]), []).append(result)
    succeeded = {
        (result["scenario"], result["server"])
        for result in results
        if "error" not in result
    }
    chosen = []
    for (_key, server), runs in groups.items():
        if "error" in runs[0]:
            if (runs[0]["scenario"], server) not in succeeded:
                chosen.append(runs[0])
            continue
        metric = HEADLINE.get(runs[0]["scenario"], ("msgs_per_s", True))[0]
        values = [run.get(metric) or 0 for run in runs]
        ranked = sorted(range(len(runs)), key=lambda index: values[index])
        median = dict(runs[ranked[(len(runs) - 1) // 2]], runs=values)
        chosen.append(median)
    return chosen


def ratios(results):
    """pushi/soketi and pushi/original of the headline figures."""
    by_key = {}
    for result in results:
        if "error" in result or "skipped" in result or result.get("previous_backlog"):
            continue
        by_key.setdefault(result_key(result), {})[result["server"]] = result
    lines = []
    for key, per_server in by_key.items():
        if "pushi" not in per_server or len(per_server) < 2:
            continue
        scenario = key.split("/", 1)[0]
        for metric, _higher in [HEADLINE[scenario]] + (
            [SECONDARY[scenario]] if scenario in SECONDARY else []
        ):
            mine = per_server["pushi"].get(metric)
            line = {"ratio": key, "metric": metric}
            for peer in ("soketi", "original"):
                theirs = per_server.get(peer, {}).get(metric)
                if mine and theirs:
                    line["pushi/%s" % peer] = round(mine / theirs, 2)
            incomplete = sorted(
                name for name, result in per_server.items() if result.get("undelivered")
            )
            if incomplete:
                # a server that did not deliver everything: its rate is real
                # but the ratio says more about its backlog than its speed
                line["incomplete"] = incomplete
            if len(line) > 2:
                lines.append(line)
    return lines


def fmt(value, digits=0):
    """Formats a number for the table."""
    if value is None:
        return "-"
    if isinstance(value, float) and digits:
        return "%.*f" % (digits, value)
    return f"{round(value):,}"


def markdown(results, info, names):
    """A markdown table, one row per scenario, one column group per server."""
    names = list(names) + sorted({result["server"] for result in results} - set(names))
    by_key = {}
    order = []
    failed = [result for result in results if "error" in result]
    for result in results:
        if "error" in result:
            continue
        key = result_key(result)
        if key not in by_key:
            order.append(key)
        by_key.setdefault(key, {})[result["server"]] = result
    for result in failed:
        # a scenario that failed as a whole fills that server's cells of
        # the scenario's rows (its own row when no server ran it)
        rows = [key for key in order if key.split("/")[0] == result["scenario"]]
        if not rows:
            rows = [result_key(result)]
            order.append(rows[0])
        for key in rows:
            by_key.setdefault(key, {}).setdefault(result["server"], result)
    lines = [
        "Machine: %s cores, %s, Python %s, Node %s, Linux %s; server and load "
        "generator share the cores over loopback."
        % (
            info["nproc"],
            info["cpu_model"],
            info["python"],
            info["node"],
            info["kernel"],
        ),
        "",
        "| scenario | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for key in order:
        cells = []
        for name in names:
            result = by_key[key].get(name)
            cells.append(cell(result) if result else "-")
        lines.append("| %s | %s |" % (label(key), " | ".join(cells)))
    lines.append("")
    repeats = max((len(result.get("runs", ())) for result in results), default=0)
    if repeats > 1:
        lines.append(
            "Each cell is the run with the median headline figure of %d runs "
            "(servers alternated)." % repeats
        )
    lines.append(
        "Cells: headline figure; latency p50/p99 from the payload timestamp; "
        "server CPU% / generator CPU% (of one core); us = server CPU per "
        "delivery; GEN-BOUND = a generator process above 90% of a core; "
        "other load = CPU used outside the bench during the measurement "
        "(other processes, unattributed kernel work)."
    )
    if any(result["server"] == "floor" for result in results):
        lines.append(
            "floor = a stand-in server that only writes pre-built frames, at "
            "Pushi's c-rate, to the same subscriber processes: the least "
            "latency this machine and load generator allow at that rate."
        )
    return "\n".join(lines)


def label(key):
    """The row label of a result key."""
    scenario, variant, size = key.split("/")
    if " workers-" in variant:
        variant, count = variant.rsplit(" workers-", 1)
        return "%s, PUSHI_WORKERS=%s" % (
            label("/".join([scenario, variant, size])),
            count,
        )
    if " nodes-" in variant:
        variant, count = variant.rsplit(" nodes-", 1)
        return "%s, nodes=%s" % (label("/".join([scenario, variant, size])), count)
    for kind in scenarios.MODES:
        if " %s-" % kind in variant:
            variant, mode = variant.split(" %s-" % kind)
            return "%s, %s %s" % (
                label("/".join([scenario, variant, size])),
                kind,
                mode,
            )
    if scenario == "recover":
        return "recovery of %s missed events" % variant.split("-")[0]
    if not size:
        return "%s (%s)" % (scenario, variant)
    names = {
        "fanout": "fan-out to %s subs, %s" % (fmt(int(size)), variant),
        "trigger": "triggers, 1 sub, 8 in flight",
        "channels": "%s sockets, own channel each, random triggers" % fmt(int(size)),
        "connect": "%s idle connections" % fmt(int(size)),
        "broadcast": "broadcast to %s subs on one channel" % fmt(int(size)),
        "persist": persist_label(variant),
        "generator": "generator self-test, %s subs, %s" % (fmt(int(size)), variant),
    }
    return names.get(scenario, key)


def persist_label(variant):
    """The row label of a ``persist`` variant (``stored1000-inflight8``)."""
    stored, _dash, inflight = variant.partition("-inflight")
    if not (stored.startswith("stored") and stored[6:].isdigit() and inflight):
        return "persisted triggers, %s" % variant
    return "persisted triggers, %s stored, %s in flight" % (
        fmt(int(stored[6:])),
        inflight,
    )


def cell(result):
    """One table cell."""
    if "error" in result:
        return "error: %s" % " ".join(result["error"].split())[:60]
    if "skipped" in result:
        return "skipped: %s" % result["skipped"]
    scenario = result["scenario"]
    parts = []
    if scenario in ("fanout", "channels", "generator"):
        parts.append("%s msgs/s" % fmt(result["msgs_per_s"]))
    elif scenario in ("trigger", "persist"):
        parts.append("%s req/s" % fmt(result["triggers_per_s"]))
    if scenario == "recover":
        timing = result["recover_ms"]
        return "p50 %s / p99 %s ms<br>%d of %d rounds recovered" % (
            timing["p50"],
            timing["p99"],
            result["recovered_rounds"],
            result["rounds"],
        )
    spread = result.get("connections_by_process") or []
    if scenario in ("connect", "broadcast") and len(spread) > 1:
        parts.append(
            "%d processes, %s-%s each" % (len(spread), fmt(spread[-1]), fmt(spread[0]))
        )
    if scenario == "connect":
        parts.append("%s conn/s" % fmt(result["connections_per_s"]))
        parts.append("%s KB/conn" % fmt(result["rss_per_connection_kb"], 1))
        if result.get("idle_server_cpu_pct") is None:
            pass
        elif result.get("ready", 0) < 20000:
            # scaled up to 20,000, the process's fixed cost would read as
            # a cost per connection
            parts.append("idle %s%%" % result["idle_server_cpu_pct"])
        else:
            parts.append(
                "idle %s%% (%s%% per 20k)"
                % (
                    result["idle_server_cpu_pct"],
                    result["idle_server_cpu_pct_per_20k"],
                )
            )
    else:
        if scenario == "broadcast" and result.get("last_delivery_ms") is not None:
            parts.append(
                "last of one in %s ms, lost %s"
                % (fmt(result["last_delivery_ms"]), result["single_lost"])
            )
        latency = result.get("latency_ms") or {}
        if scenario in ("trigger", "persist"):
            latency = result.get("http_latency_ms") or latency
        if latency.get("p50") is not None:
            parts.append("p50 %s / p99 %s ms" % (latency["p50"], latency["p99"]))
        cross = result.get("latency_cross_ms") or {}
        if scenario == "fanout" and cross.get("p50") is not None:
            parts.append("cross-node p50 %s / p99 %s ms" % (cross["p50"], cross["p99"]))
        loss = result.get("lost_sampled", 0) + result.get("undelivered", 0)
        if loss or result.get("duplicates_sampled"):
            parts.append(
                "lost %s, undelivered %s, dup %s"
                % (
                    result.get("lost_sampled"),
                    fmt(result.get("undelivered")),
                    result.get("duplicates_sampled"),
                )
            )
    if scenario == "persist" and result.get("ratio_to_plain") is not None:
        parts.append(
            "%sx plain (%s req/s)"
            % (
                result["ratio_to_plain"],
                " / ".join(fmt(rate) for rate in result["plain_triggers_per_s"]),
            )
        )
        if result.get("persisted_extra_cpu_us") is not None:
            parts.append(
                "server CPU %s us per trigger (plain %s)"
                % (
                    fmt(result["server_cpu_us_per_delivery"], 1),
                    fmt(result["plain_server_cpu_us_per_trigger"], 1),
                )
            )
    if result.get("server_cpu_us_per_delivery") is not None and scenario in (
        "fanout",
        "channels",
    ):
        parts.append("%s us" % fmt(result["server_cpu_us_per_delivery"], 1))
    if result.get("redis_cpu_us_per_publish") is not None:
        if result.get("redis_cpu_us_per_delivery") is not None:
            parts.append("Redis %s us" % fmt(result["redis_cpu_us_per_delivery"], 2))
        parts.append(
            "Redis %s us/publish (evalsha %s/publish, %s us/call)"
            % (
                fmt(result["redis_cpu_us_per_publish"], 1),
                fmt(result["redis_calls_per_publish"].get("evalsha"), 1),
                fmt(result["redis_usec_per_call"].get("evalsha"), 1),
            )
        )
    parts.append(
        "cpu %s%% / %s%%"
        % (result.get("server_cpu_pct"), result.get("generator_cpu_pct"))
    )
    if result.get("generator_bound"):
        parts.append("GEN-BOUND")
    if result.get("previous_backlog"):
        parts.append("previous phase still delivering")
    if (result.get("other_cpu_pct") or 0) > CONTENDED_PCT:
        parts.append("other load %s%%" % fmt(result["other_cpu_pct"]))
    return "<br>".join(parts)


def abuse_table(results):
    """The table of ``--scenario abuse``: one row per attack."""
    lines = [
        "Victim: one subscriber of its own app, %g publishes/s over REST with "
        "that app's credentials (16 connections) while another client "
        "attacks, each attack on a fresh server; expected: the publishes due "
        "while the attack lasts, each sent when due or, when the server held "
        "the connections up, as soon as one is free; latency from when it "
        "was due to its delivery; lost: not delivered by the end of the "
        "drain. Goal: p99 under %g ms and nothing lost during every attack."
        % (scenarios.VICTIM_RATE, scenarios.VICTIM_GOAL_MS),
        "",
        "| attack | victim p50 | p99 | max | delivered/expected (lost) | "
        "server RSS before / peak | attacker sent | attacker cut off | goal |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        attack = result["variant"]
        what, unit = scenarios.ATTACKS.get(attack, ("no attack", ""))
        name = "%s: %s" % (attack, what)
        if "error" in result:
            error = " ".join(result["error"].split())[:100]
            lines.append("| %s | error: %s |" % (name, error) + " |" * 7)
            continue
        latency = result["latency_ms"]
        cells = [name]
        for key in ("p50", "p99", "max"):
            value = latency.get(key)
            cells.append("-" if value is None else "%s ms" % fmt(value, 1))
        cells.append(
            "%s/%s (%s)"
            % (fmt(result["delivered"]), fmt(result["expected"]), fmt(result["lost"]))
        )
        cells.append(
            "%s / %s MB"
            % (fmt(result["rss_before_kb"] / 1024), fmt(result["rss_peak_kb"] / 1024))
        )
        attacker = result.get("attacker")
        if attacker:
            cells.append(
                "%s %s in %s s"
                % (fmt(attacker["units_sent"]), unit, result["attack_s"])
            )
            cells.append("%s times" % fmt(attacker["cut_offs"]))
        else:
            cells += ["-", "-"]
        cells.append("ok" if result["victim_goal_met"] else "MISSED")
        lines.append("| %s |" % " | ".join(cells))
    return "\n".join(lines)


def emit(line, out):
    """Prints one JSON line (and appends it to ``out``)."""
    text = json.dumps(line, sort_keys=False)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    if out:
        with open(out, "a") as file:
            file.write(text + "\n")


def on_signal(signum, _frame):
    """Turns SIGTERM into the same clean-up path as Ctrl-C."""
    raise KeyboardInterrupt("signal %d" % signum)


def run_once(chosen, names, profile, options):
    """Runs each chosen scenario on each server once; returns the results
    (also emitted as they come)."""
    results = []
    for scenario in chosen:
        if scenario in scenarios.SELF_SCENARIOS:
            log("scenario %s (the load generator itself)" % scenario)
            for line in scenarios.SELF_SCENARIOS[scenario]("blaster", profile, options):
                emit(line, options.out)
                results.append(line)
            continue
        for name in names:
            for count in worker_counts(name, options):
                for nodes in node_counts(name, options):
                    servers.PushiServer.workers = count
                    servers.PushiServer.node_count = nodes or 1
                    try:
                        results += run_server(
                            scenario, name, count, profile, options, nodes
                        )
                    finally:
                        servers.PushiServer.workers = None
                        servers.PushiServer.node_count = 1
    return results


def run_server(scenario, name, count, profile, options, nodes=None):
    """Runs one scenario on one server (with ``count`` Pushi workers, or
    its default with None; on ``nodes`` nodes with ``--nodes``), once per
    mode of --recovery and --metrics; returns the results."""
    results = []
    for mode in pushi_modes(scenario, name, options):
        options.mode = mode
        log(
            "scenario %s on %s%s%s%s"
            % (
                scenario,
                name,
                " %s %s" % mode if mode else "",
                " workers %d" % count if count else "",
                " nodes %d" % nodes if nodes else "",
            )
        )
        try:
            lines = scenarios.SCENARIOS[scenario](name, profile, options)
        except KeyboardInterrupt:
            raise
        except Exception as exception:  # report and go on
            lines = [
                {
                    "scenario": scenario,
                    "variant": "error",
                    "server": name,
                    "error": "%s: %s" % (type(exception).__name__, exception),
                }
            ]
        for line in lines:
            if mode:
                # a row per mode (the floor measured after it too)
                kind, value = mode
                line[kind] = value
                line["variant"] = "%s %s-%s" % (line["variant"], kind, value)
            if count:
                line["pushi_workers"] = count
                line["variant"] = "%s workers-%d" % (line["variant"], count)
            if nodes:
                line["nodes"] = nodes
                line["variant"] = "%s nodes-%d" % (line["variant"], nodes)
            emit(line, options.out)
            results.append(line)
    options.mode = None
    return results


def worker_counts(name, options):
    """The ``--workers`` counts Pushi runs with (None: its default)."""
    if not options.workers or name != "pushi":
        return [None]
    return [int(count) for count in options.workers.split(",")]


def node_counts(name, options):
    """The ``--nodes`` counts Pushi runs with (None: not asked for)."""
    if not options.nodes or name != "pushi":
        return [None]
    return [int(count) for count in options.nodes.split(",")]


def node_ratios(results):
    """With ``--nodes``: each nodes=N row of Pushi against its nodes=1 row
    of the same run: msgs/s, server CPU per delivery (nodes and Redis),
    triggers/s, and cross-node p99 against the single node's p99."""
    single = {}
    for result in results:
        # the stand-in floor beside nodes=1 is not the single process
        if result.get("nodes") == 1 and result["server"] == "pushi":
            single[result_key(result).replace(" nodes-1/", "/")] = result
    lines = []
    for result in results:
        nodes = result.get("nodes")
        if nodes in (None, 1) or "error" in result or "skipped" in result:
            continue
        key = result_key(result)
        base = single.get(key.replace(" nodes-%d/" % nodes, "/"))
        if not base:
            continue
        line = {"ratio": key, "nodes": "%d/1" % nodes}
        for metric in ("msgs_per_s", "server_cpu_us_per_delivery", "triggers_per_s"):
            if result.get(metric) and base.get(metric):
                line[metric] = round(result[metric] / base[metric], 2)
        cross = (result.get("latency_cross_ms") or {}).get("p99")
        if result["scenario"] == "trigger":
            cross = (result.get("latency_ms") or {}).get("p99")
        mine = (base.get("latency_ms") or {}).get("p99")
        if cross and mine:
            line["cross_p99/single_p99"] = round(cross / mine, 2)
        lines.append(line)
    return lines


def pushi_modes(scenario, name, options):
    """The ``(kind, mode)`` pairs of ``--recovery`` and ``--metrics`` a
    scenario runs in on a server, each named one for Pushi's fan-out and
    trigger scenarios, else one run (None).  Every other repeat takes the
    modes in reverse, as the first run after the others tends to differ."""
    if name != "pushi" or scenario not in scenarios.MODE_SCENARIOS:
        return [None]
    modes = [
        (kind, mode)
        for kind in scenarios.MODES
        for mode in (getattr(options, kind) or "").split(",")
        if mode
    ]
    if options.attempt % 2:
        modes.reverse()
    return modes or [None]


def main(argv=None):
    """Runs the bench; returns the process exit code."""
    options = parse_args(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, on_signal)
    # also when started in the background, where SIGINT comes in ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from .worker import raise_nofile

    raise_nofile()
    if options.install_peers:
        for name in ("soketi", "original"):
            server = servers.SERVERS[name](None)
            if not server.available():
                server.install(log)
    names = select_servers(options.server)
    chosen = options.scenario.split(",") if options.scenario else default_scenarios()
    for name in chosen:
        if name not in scenarios.SCENARIOS and name not in scenarios.SELF_SCENARIOS:
            raise SystemExit("unknown scenario %r" % name)
    for kind, modes in scenarios.MODES.items():
        for mode in (getattr(options, kind) or "").split(","):
            if mode and mode not in modes:
                raise SystemExit("unknown --%s mode %r (on, off)" % (kind, mode))
    for name in options.attacks.split(",") if options.attacks else ():
        if name not in scenarios.ATTACKS:
            raise SystemExit(
                "unknown attack %r (have %s)" % (name, ",".join(scenarios.ATTACKS))
            )
    profile = dict(scenarios.PROFILES["quick" if options.quick else "default"])
    if options.duration:
        profile["duration"] = options.duration
    if options.subscribers:
        profile["fanout_sizes"] = [int(n) for n in options.subscribers.split(",")]
    if options.inflight:
        profile["persist_inflight"] = [int(n) for n in options.inflight.split(",")]
    info = machine()
    info["profile"] = "quick" if options.quick else "default"
    info["servers"] = names
    info["scenarios"] = chosen
    emit({"machine": info}, options.out)
    results = []
    started = time.monotonic()
    try:
        for attempt in range(options.repeat):
            options.attempt = attempt
            if options.repeat > 1:
                log("run %d of %d" % (attempt + 1, options.repeat))
            results += run_once(chosen, names, profile, options)
    except KeyboardInterrupt:
        log("interrupted: children stopped")
        return 130
    if options.repeat > 1:
        results = medians(results)
        for line in results:
            emit(dict(line, median_of=options.repeat), options.out)
    for line in ratios(results) + node_ratios(results):
        emit(line, options.out)
    log("done in %.0f s" % (time.monotonic() - started))
    abused = [result for result in results if result["scenario"] == "abuse"]
    results = [result for result in results if result["scenario"] != "abuse"]
    if options.markdown and results:
        sys.stdout.write("\n" + markdown(results, info, names) + "\n")
    if abused:
        sys.stdout.write("\n" + abuse_table(abused) + "\n")
    return 0
