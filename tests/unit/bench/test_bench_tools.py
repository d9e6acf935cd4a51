"""Tests of the pure parts of the benchmark harness (``bench/``): the
signed query, the client frames and the frame-header counter, percentiles
and the markdown table; the signatures and frame encoding themselves are
``pushi.proto``'s, tested with it.
No timing assertions."""

import os
import struct
import sys

import pytest

from support import ROOT

sys.path.insert(0, ROOT)

from bench import cli, stats, wire
from pushi.proto import websocket

KEY = "278d425bdf160c739803"
SECRET = "7ad3773142a6692b25b8"
BODY = '{"name":"foo","channels":["project-3"],"data":"{\\"some\\":\\"data\\"}"}'


def test_signed_query_has_every_parameter():
    """The query of the worked example of Pusher's HTTP API documentation
    (a str body, as the harness's REST calls pass it): the signature, the
    body digest, the key, the time and the version."""
    query = wire.signed_query(
        KEY, SECRET, "POST", "/apps/3/events", BODY, now=1353088179
    )
    assert dict(pair.split("=", 1) for pair in query.split("&")) == {
        "auth_key": KEY,
        "auth_timestamp": "1353088179",
        "auth_version": "1.0",
        "body_md5": "ec365a775a4cd0599faeb73354201b6f",
        "auth_signature": (
            "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        ),
    }
    assert (
        wire.signed_query(
            KEY, SECRET, "POST", "/apps/3/events", BODY.encode(), now=1353088179
        )
        == query
    )


def server_frame(payload, opcode=websocket.OP_TEXT, fin=True):
    """An unmasked server frame."""
    length = len(payload)
    first = bytes([(0x80 if fin else 0) | opcode])
    if length < 126:
        head = first + bytes([length])
    elif length < 65536:
        head = first + bytes([126]) + struct.pack("!H", length)
    else:
        head = first + bytes([127]) + struct.pack("!Q", length)
    return head + payload


def test_counter_counts_whole_frames():
    """Small, 16-bit and 64-bit lengths in one chunk."""
    data = (
        server_frame(b"a" * 5)
        + server_frame(b"b" * 300)
        + server_frame(b"c" * 70000)
        + server_frame(b"")
    )
    counter = wire.FrameCounter()
    assert counter.feed(data) == 4
    assert counter.skip == 0 and counter.partial == b""


def test_counter_handles_any_split():
    """The count does not depend on where the stream is cut."""
    data = b"".join(server_frame(bytes([65 + i]) * (i * 37)) for i in range(12))
    for cut in range(1, 40):
        counter = wire.FrameCounter()
        total = sum(counter.feed(data[i : i + cut]) for i in range(0, len(data), cut))
        assert total == 12, cut


def test_counter_split_inside_header():
    """A header cut between its length bytes."""
    frame = server_frame(b"x" * 1000)
    counter = wire.FrameCounter()
    assert counter.feed(frame[:3]) == 0
    assert counter.feed(frame[3:10]) == 1
    assert counter.feed(frame[10:]) == 0
    assert counter.feed(frame) == 1


def test_counter_control_and_fragments():
    """Pings are kept apart; only the final fragment counts as a message."""
    data = (
        server_frame(b"par", websocket.OP_TEXT, fin=False)
        + server_frame(b"ping!", websocket.OP_PING)
        + server_frame(b"t", websocket.OP_CONTINUATION, fin=True)
        + server_frame(b"{}")
    )
    counter = wire.FrameCounter()
    assert counter.feed(data) == 2
    assert counter.controls == 1
    assert counter.pings == [b"ping!"]


def test_parse_frames_and_client_masking():
    """A masked client frame parses back to its payload; partial frames wait."""
    frame = wire.encode_frame('{"event":"x"}', mask=b"\x01\x02\x03\x04")
    assert frame[1] & 0x80
    frames, used = wire.parse_frames(frame + frame[:3])
    assert used == len(frame)
    assert frames == [(True, websocket.OP_TEXT, b'{"event":"x"}')]


def test_percentile_nearest_rank():
    """Nearest-rank percentiles on known data."""
    values = list(range(1, 101))
    assert stats.percentile(values, 0.5) == 50
    assert stats.percentile(values, 0.95) == 95
    assert stats.percentile(values, 0.99) == 99
    assert stats.percentile(values, 1.0) == 100
    assert stats.percentile([7], 0.99) == 7
    assert stats.percentile([], 0.5) is None
    assert stats.percentile([3, 1, 2], 0.5) == 2


def test_summarize_scales_to_milliseconds():
    """Seconds in, milliseconds out."""
    summary = stats.summarize([0.001, 0.002, 0.003, 0.004])
    assert summary == {"n": 4, "p50": 2.0, "p95": 4.0, "p99": 4.0, "max": 4.0}
    assert stats.summarize([])["p50"] is None


def test_markdown_puts_a_failed_scenario_in_its_rows():
    from bench import cli

    info = dict(nproc=2, cpu_model="x", python="3", node="20", kernel="6")
    ok = dict(
        scenario="trigger",
        variant="inflight8",
        subscribers=1,
        triggers_per_s=5000.0,
        http_latency_ms={"p50": 1.0, "p99": 2.0},
        server_cpu_pct=90.0,
        generator_cpu_pct=70.0,
    )
    results = [
        dict(ok, server="pushi"),
        dict(
            scenario="trigger",
            variant="error",
            server="original",
            error="RuntimeError: did not start:\n  Traceback",
        ),
        dict(scenario="connect", variant="error", server="soketi", error="boom"),
    ]
    lines = cli.markdown(results, info, ["pushi", "original", "soketi"]).split("\n")
    rows = [line for line in lines if line.startswith("| ") and "---" not in line]
    assert rows[1].startswith("| triggers, 1 sub, 8 in flight | 5,000 req/s")
    assert "error: RuntimeError: did not start: Traceback" in rows[1]
    assert rows[2] == "| connect (error) | - | - | error: boom |"
    assert len(rows) == 3


def test_medians_keep_the_median_run_whole():
    from bench import cli

    def run(server, rate, p99):
        return dict(
            scenario="trigger",
            variant="inflight8",
            subscribers=1,
            server=server,
            triggers_per_s=rate,
            http_latency_ms={"p50": 1.0, "p99": p99},
        )

    error = dict(scenario="connect", variant="error", server="soketi", error="boom")
    results = [
        run("pushi", 5000.0, 3.0),
        run("soketi", 3000.0, 9.0),
        error,
        run("pushi", 4000.0, 2.0),
        run("soketi", 3100.0, 8.0),
        dict(error, server="pushi"),
        run("pushi", 6000.0, 1.0),
        run("soketi", 2900.0, 7.0),
        dict(
            scenario="connect",
            variant="idle",
            connections=10,
            server="pushi",
            connections_per_s=900.0,
            rss_per_connection_kb=6.0,
        ),
    ]
    chosen = {(r["scenario"], r["server"]): r for r in cli.medians(results)}
    # the median rate's run, with its own latency, and every run's rate
    assert chosen["trigger", "pushi"]["triggers_per_s"] == 5000.0
    assert chosen["trigger", "pushi"]["http_latency_ms"]["p99"] == 3.0
    assert chosen["trigger", "pushi"]["runs"] == [5000.0, 4000.0, 6000.0]
    assert chosen["trigger", "soketi"]["triggers_per_s"] == 3000.0
    # an error stays only where no run of that scenario succeeded
    assert chosen["connect", "soketi"] == error
    assert chosen["connect", "pushi"]["connections_per_s"] == 900.0
    assert len(chosen) == 4
    info = dict(nproc=2, cpu_model="x", python="3", node="20", kernel="6")
    table = cli.markdown(cli.medians(results), info, ["pushi", "soketi"])
    assert "median headline figure of 3 runs" in table


def test_encode_frame_fragment():
    """A frame that is not the last of its message has FIN clear."""
    frame = wire.encode_frame(
        b"", websocket.OP_CONTINUATION, mask=b"\0\0\0\0", fin=False
    )
    assert frame == b"\x00\x80\0\0\0\0"
    frames, _used = wire.parse_frames(wire.encode_frame("{", fin=False))
    assert frames == [(False, websocket.OP_TEXT, b"{")]


def quick_bench(*args):
    """The lines ``scripts/bench --quick --server pushi`` prints with
    ``args``, once it exited 0."""
    import subprocess

    output = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "bench"), "--quick"]
        + ["--server", "pushi", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert output.returncode == 0, output.stderr[-3000:]
    return output.stdout.splitlines()


@pytest.mark.e2e
def test_abuse_scenario_prints_a_row_per_attack():
    """``--scenario abuse`` against the real server, a second per attack:
    a table row for the baseline and each attack asked for (no figure is
    checked: they depend on the machine and on the server's defences)."""
    attacks = ["console", "rest-pipeline", "cache", "publish-flood"]
    lines = quick_bench(
        "--scenario", "abuse", "--attacks", ",".join(attacks), "--duration", "1"
    )
    header = lines.index(
        "| attack | victim p50 | p99 | max | delivered/expected (lost) | "
        "server RSS before / peak | attacker sent | attacker cut off | goal |"
    )
    rows = [line for line in lines[header + 2 :] if line.startswith("| ")]
    assert [row.split(":")[0] for row in rows] == ["| baseline"] + [
        "| " + attack for attack in attacks
    ]
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert len(cells) == 9, row
        assert "error" not in row, row
        assert cells[-1] in ("ok", "MISSED"), row
    for row in rows[1:]:
        assert row.split("|")[7].strip().endswith(" s"), row
        assert row.split("|")[8].strip().endswith(" times"), row


def test_abuse_table_shows_an_error_in_its_row():
    from bench import cli

    ok = dict(
        scenario="abuse",
        variant="ping",
        server="pushi",
        latency_ms={"p50": 1.0, "p99": 2.5, "max": 3.0},
        delivered=50,
        expected=50,
        lost=0,
        rss_before_kb=40960,
        rss_peak_kb=51200,
        attack_s=1.0,
        attacker={"units_sent": 1000, "cut_offs": 3},
        victim_goal_met=True,
    )
    failed = dict(scenario="abuse", variant="cache", server="pushi", error="boom")
    lines = cli.abuse_table([ok, failed]).split("\n")
    rows = [line for line in lines if line.startswith("| ") and "---" not in line]
    assert rows[1] == (
        "| ping: WebSocket ping frames on one socket | 1.0 ms | 2.5 ms | 3.0 ms "
        "| 50/50 (0) | 40 / 50 MB | 1,000 pings in 1.0 s | 3 times | ok |"
    )
    assert rows[2].startswith("| cache: ") and "error: boom" in rows[2]
    assert rows[2].count("|") == rows[1].count("|")


def test_source_addresses_are_distinct_loopback_hosts():
    """The load generator's source addresses: in 127.0.0.0/8, from
    127.0.0.2 on, never a host part of 0 or 255, never twice."""
    from bench import scenarios

    addresses = [scenarios.source_address(index) for index in range(600)]
    assert addresses[:2] == ["127.0.0.2", "127.0.0.3"]
    assert len(set(addresses)) == len(addresses)
    for address in addresses:
        octets = [int(part) for part in address.split(".")]
        assert octets[0] == 127 and 0 < octets[3] < 255


def test_generators_and_slope():
    """One load process per ``PER_GENERATOR`` sockets; memory per
    connection is the least-squares slope of RSS over the count."""
    from bench import scenarios

    assert scenarios.generators_for(18000, None) == 4
    assert scenarios.generators_for(500, None) == 1
    assert scenarios.generators_for(18000, 6) == 6
    points = [(0, 1000), (100, 1400), (200, 1800), (300, 2200)]
    assert scenarios.slope(points) == 4.0
    assert scenarios.slope([(5, 1)]) is None


def test_node_ratios_compare_each_node_count_with_the_single_process():
    from bench import cli

    def row(nodes, variant, msgs, us, p99, cross=None):
        result = dict(
            scenario="fanout",
            variant="%s nodes-%d" % (variant, nodes),
            server="pushi",
            subscribers=1000,
            nodes=nodes,
            msgs_per_s=msgs,
            server_cpu_us_per_delivery=us,
            triggers_per_s=msgs / 1000,
            latency_ms={"p50": 1.0, "p99": p99},
        )
        if cross is not None:
            result["latency_cross_ms"] = {"p50": 2.0, "p99": cross}
        return result

    results = [
        row(1, "c-rate", 40000.0, 10.0, 4.0),
        dict(row(1, "c-rate", 40000.0, 5.0, 2.0), server="floor"),
        row(2, "c-rate", 40000.0, 11.0, 3.0, cross=5.0),
        row(2, "a-serial", 60000.0, 9.0, 3.0, cross=5.0),  # no nodes=1 row
    ]
    lines = cli.node_ratios(results)
    assert lines == [
        {
            "ratio": "fanout/c-rate nodes-2/1000",
            "nodes": "2/1",
            "msgs_per_s": 1.0,
            "server_cpu_us_per_delivery": 1.1,
            "triggers_per_s": 1.0,
            "cross_p99/single_p99": 1.25,
        }
    ]
    assert cli.label("fanout/c-rate nodes-2/1000") == (
        "fan-out to 1,000 subs, c-rate, nodes=2"
    )


def test_redis_commandstats_of_a_real_redis_server(tmp_path):
    from bench import servers

    if not os.path.exists(servers.REDIS_SERVER):
        pytest.skip("redis-server is not installed")
    redis = servers.RedisProcess(str(tmp_path))
    redis.start()
    try:
        assert redis.command("SET", "bench", "1") == "OK"
        assert redis.command("GET", "bench") == "1"
        assert redis.command("GET", "missing") is None
        calls, usec = redis.commandstats()["get"]
        assert calls == 2 and usec >= 0
    finally:
        redis.stop()


def test_modes_alternate_their_order_from_one_repeat_to_the_next():
    options = cli.parse_args(["--metrics", "on,off", "--recovery", "off"])
    first = cli.pushi_modes("trigger", "pushi", options)
    assert first == [("recovery", "off"), ("metrics", "on"), ("metrics", "off")]
    options.attempt = 1
    assert cli.pushi_modes("trigger", "pushi", options) == first[::-1]
    # other servers and scenarios run once, as they are
    assert cli.pushi_modes("trigger", "soketi", options) == [None]
    assert cli.pushi_modes("connect", "pushi", options) == [None]
    assert cli.label("fanout/a-serial metrics-off/1000") == (
        "fan-out to 1,000 subs, a-serial, metrics off"
    )


def test_socket_ids_name_the_process_that_holds_each_connection():
    from bench import scenarios, worker

    assert worker.node_of("1234.56") == "1234"
    assert worker.node_of("no-dot") == "?"
    nodes = scenarios.summed(
        [{"nodes": {"7": 3, "9": 1}}, {"nodes": {"9": 4}}, {}], "nodes"
    )
    assert nodes == {"7": 3, "9": 5}
    assert scenarios.by_node(nodes) == [5, 3]
    assert scenarios.by_node_text(nodes) == "5 3 (2 processes, least 3, most 5)"


def test_connect_and_broadcast_over_workers_count_every_process():
    """``--scenario connect,broadcast --workers 2`` against the real server:
    the connections counted per worker from their socket ids, and the
    server's figures over every process of its tree (the supervisor, both
    workers, the events writer and the private redis-server)."""
    import json

    from bench import servers

    if not os.path.exists(servers.REDIS_SERVER):
        pytest.skip("redis-server is not installed")
    lines = quick_bench(
        "--scenario",
        "connect,broadcast",
        "--workers",
        "2",
        "--connections",
        "400",
        "--idle",
        "1",
        "--duration",
        "1",
    )
    results = {}
    for line in lines:
        if line.startswith("{"):
            result = json.loads(line)
            results[result.get("scenario")] = result
    for scenario in ("connect", "broadcast"):
        result = results[scenario]
        assert "error" not in result, result
        assert result["ready"] == 400, result
        spread = result["connections_by_process"]
        assert len(spread) == 2 and sum(spread) == 400, spread
        roles = result["server_processes"]
        assert {role: roles[role]["n"] for role in roles} == {
            "main": 1,
            "worker": 2,
            "writer": 1,
            "redis-server": 1,
        }
    assert results["connect"]["idle_open_after"] == 400
    assert results["broadcast"]["single_lost"] == 0


def test_persist_repeats_report_the_median_ratio_per_in_flight_count():
    def run(inflight, rate, ratio):
        return dict(
            scenario="persist",
            variant="stored1000-inflight%d" % inflight,
            subscribers=1,
            server="pushi",
            triggers_per_s=rate,
            plain_triggers_per_s=[rate / ratio, rate / ratio],
            ratio_to_plain=ratio,
            inflight=inflight,
        )

    # the run with the median rate is not the one with the median ratio
    results = [
        run(8, 2600.0, 0.52),
        run(64, 5000.0, 0.81),
        run(8, 2000.0, 0.47),
        run(64, 4000.0, 0.85),
        run(8, 3000.0, 0.49),
        run(64, 4500.0, 0.79),
    ]
    chosen = {r["inflight"]: r for r in cli.medians(results)}
    assert chosen[8]["ratio_to_plain"] == 0.49
    assert chosen[8]["runs"] == [0.52, 0.47, 0.49]
    assert chosen[64]["ratio_to_plain"] == 0.81
    assert cli.label("persist/stored100000-inflight64/1") == (
        "persisted triggers, 100,000 stored, 64 in flight"
    )
    options = cli.parse_args(["--scenario", "persist", "--inflight", "8,64"])
    assert options.inflight == "8,64"


def test_a_persist_cell_gives_the_server_cpu_per_trigger_beside_the_plain_ones():
    result = dict(
        scenario="persist",
        variant="stored1000-inflight64",
        server="pushi",
        triggers_per_s=12000.0,
        msgs_per_s=12000.0,
        plain_triggers_per_s=[16000.0, 17000.0],
        ratio_to_plain=0.727,
        server_cpu_us_per_delivery=85.94,
        plain_server_cpu_us_per_trigger=58.1,
        persisted_extra_cpu_us=27.84,
    )
    text = cli.cell(result)
    assert "0.727x plain (16,000 / 17,000 req/s)" in text
    assert "server CPU 85.9 us per trigger (plain 58.1)" in text
    # a run from before these figures: the ratio only
    del result["persisted_extra_cpu_us"]
    assert "server CPU" not in cli.cell(result)


def test_idle_cost_is_given_per_20k_only_from_20k_connections():
    from bench import cli

    def idle(ready, pct, per_20k):
        return dict(
            scenario="connect",
            variant="idle",
            connections=ready,
            ready=ready,
            server="pushi",
            connections_per_s=1000.0,
            rss_per_connection_kb=2.3,
            idle_server_cpu_pct=pct,
            idle_server_cpu_pct_per_20k=per_20k,
        )

    # 5,000 sockets: the processes' fixed cost, not scaled up to 20,000
    few = cli.cell(idle(5000, 2.3, 9.2))
    assert "idle 2.3%" in few and "per 20k" not in few
    many = cli.cell(idle(100000, 17.1, 3.42))
    assert "idle 17.1% (3.42% per 20k)" in many
