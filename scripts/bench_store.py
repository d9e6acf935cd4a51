#!/usr/bin/env python
"""Measures ``add_events`` throughput of the store backends.

For each backend and each pre-filled size (default 1k and 100k events
already stored), ``--threads`` threads each add single events (one
``add_events`` call per event, as persisted triggering does) for
``--seconds``, and one JSON line is printed per case:

    {"backend": "sqlite", "stored": 100000, "threads": 8, "events": ...,
     "seconds": ..., "events_per_s": ..., "get_events_ms": ...,
     "trim_first_ms": ..., "trim_steady_ms": ...}

``get_events_ms`` is the mean time of a newest-first page of 10 on a busy
channel afterwards, to show reads stay flat as the store grows;
``trim_first_ms`` the time of a first retention pass down to 100 events per
channel (a big delete, in chunks) and ``trim_steady_ms`` of the next pass,
after 100 new events (what running retention every few seconds costs);
``publish_during_trim_ms`` the median and longest ``add_events`` of another
app storing an event every 10 ms during the first pass (what a trim costs
the other publishers).

    python scripts/bench_store.py                 # SQLite
    python scripts/bench_store.py --mongo         # + the MongoDB emulator
    python scripts/bench_store.py --mongo-url mongodb://127.0.0.1:27017/bench
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from pushi.base.store import SQLiteStore  # noqa: E402
from pushi.proto import messages  # noqa: E402

PREFILL_BATCH = 1000


def make_event(app_id, channel, timestamp=None):
    """Returns an event record like the engine persists."""
    return dict(
        mid=messages.message_id(),
        app_id=app_id,
        channel=channel,
        event="bench",
        data='{"message":"hello from the store benchmark"}',
        timestamp=time.time() if timestamp is None else timestamp,
        user_id=None,
    )


def prefill(store, app_id, stored):
    """Stores ``stored`` events over ten channels in batches."""
    for start in range(0, stored, PREFILL_BATCH):
        store.add_events(
            [
                make_event(app_id, "channel-%d" % (index % 10))
                for index in range(start, min(start + PREFILL_BATCH, stored))
            ]
        )


def measure(store, app_id, threads, seconds):
    """Runs ``threads`` threads adding single events for ``seconds``;
    returns how many events were added and the time it took."""
    counts = [0] * threads
    deadline = time.perf_counter() + seconds
    start_barrier = threading.Barrier(threads + 1)

    def work(index):
        channel = "channel-%d" % (index % 10)
        start_barrier.wait()
        while time.perf_counter() < deadline:
            store.add_events([make_event(app_id, channel)])
            counts[index] += 1

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    start_barrier.wait()
    started = time.perf_counter()
    for worker in workers:
        worker.join()
    return sum(counts), time.perf_counter() - started


def time_reads(store, app_id, rounds=200):
    started = time.perf_counter()
    for _ in range(rounds):
        store.get_events(app_id, ["channel-0"], skip=0, count=10)
    return (time.perf_counter() - started) / rounds * 1000.0


def time_trims(store, app_id, other_app_id, keep=100):
    """Times a first count trim (down to ``keep`` per channel, a big delete)
    while another app stores an event every 10 ms, then a steady-state one
    (after 100 new events, as when retention runs every few seconds);
    returns both in milliseconds, and the other app's waits."""
    waits = []
    trimming = threading.Event()
    trimming.set()

    def publish():
        while trimming.is_set():
            started = time.perf_counter()
            store.add_events([make_event(other_app_id, "other")])
            waits.append((time.perf_counter() - started) * 1000.0)
            time.sleep(0.01)

    publisher = threading.Thread(target=publish)
    publisher.start()
    started = time.perf_counter()
    try:
        store.trim_events(app_id, max_count=keep)
    finally:
        first = time.perf_counter() - started
        trimming.clear()
        publisher.join()
    prefill(store, app_id, 100)
    started = time.perf_counter()
    store.trim_events(app_id, max_count=keep, max_age=3600)
    steady = time.perf_counter() - started
    waits.sort()
    return first * 1000.0, steady * 1000.0, waits


def run_case(backend, open_store, stored, threads, seconds):
    store = open_store()
    try:
        app_id = store.create_app("bench")["app_id"]
        other_app_id = store.create_app("other")["app_id"]
        prefill(store, app_id, stored)
        events, elapsed = measure(store, app_id, threads, seconds)
        line = dict(
            backend=backend,
            stored=stored,
            threads=threads,
            events=events,
            seconds=round(elapsed, 3),
            events_per_s=round(events / elapsed, 1),
            get_events_ms=round(time_reads(store, app_id), 3),
        )
        trim_first_ms, trim_steady_ms, waits = time_trims(store, app_id, other_app_id)
        line.update(
            trim_first_ms=round(trim_first_ms, 1),
            trim_steady_ms=round(trim_steady_ms, 1),
            publish_during_trim_ms=dict(
                n=len(waits),
                p50=round(waits[len(waits) // 2], 2),
                max=round(waits[-1], 2),
            ),
        )
        print(json.dumps(line), flush=True)
    finally:
        store.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,100000")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--synchronous", default="FULL", help="SQLite pragma")
    parser.add_argument(
        "--mongo", action="store_true", help="also run on the MongoDB emulator"
    )
    parser.add_argument(
        "--mongo-sizes",
        default="1000,10000",
        help="pre-filled sizes for the emulator (mongomock scans on insert)",
    )
    parser.add_argument("--mongo-url", help="also run on a real MongoDB")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]

    for stored in sizes:
        data_dir = tempfile.mkdtemp(prefix="pushi-bench-")
        try:
            run_case(
                "sqlite",
                lambda data_dir=data_dir: SQLiteStore(
                    data_dir, synchronous=args.synchronous
                ),
                stored,
                args.threads,
                args.seconds,
            )
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)

    if args.mongo:
        from pushi.base.store.mongo import MongoStore

        from mongo_emulator import MongoEmulator

        for stored in [int(size) for size in args.mongo_sizes.split(",")]:
            with MongoEmulator() as emulator:
                run_case(
                    "mongo-emulator",
                    lambda: MongoStore(emulator.url, database="bench"),
                    stored,
                    args.threads,
                    args.seconds,
                )

    if args.mongo_url:
        from pushi.base.store.mongo import MongoStore

        for stored in sizes:
            database = "pushi_bench_%s" % uuid.uuid4().hex[:8]
            try:
                run_case(
                    "mongo",
                    lambda database=database: MongoStore(
                        args.mongo_url, database=database
                    ),
                    stored,
                    args.threads,
                    args.seconds,
                )
            finally:
                import pymongo

                pymongo.MongoClient(args.mongo_url).drop_database(database)


if __name__ == "__main__":
    main()
