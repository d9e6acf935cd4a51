#!/usr/bin/env python
"""Measures the REST port's HTTP/1.1 parsing and framing with no socket:
``proto.http`` against h11 (if installed), on typical publish requests.

Each case feeds ``--requests`` signed ``POST /apps/<id>/events`` requests
(one connection, pipelined in chunks of ``--pipeline``), takes each one out
whole with its body, and frames a JSON answer for it; the best of
``--repeat`` runs is printed as one JSON line per parser:

    {"parser": "pushi", "requests": 100000, "us_per_request": ...,
     "requests_per_s": ...}

    python scripts/bench_http.py
    python scripts/bench_http.py --requests 200000 --pipeline 1
"""

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))

from pushi.proto import http  # noqa: E402

BODY = json.dumps(
    {"name": "price", "channel": "ticker-7", "data": json.dumps({"bid": 101.25})},
    separators=(",", ":"),
).encode()
REQUEST = (
    b"POST /apps/1/events?auth_key=3f9c0a7e1b2d4c5f6a7b&auth_timestamp=1765000000"
    b"&auth_version=1.0&body_md5=0123456789abcdef0123456789abcdef"
    b"&auth_signature=" + b"a" * 64 + b" HTTP/1.1\r\n"
    b"Host: 127.0.0.1:8080\r\n"
    b"User-Agent: pusher-http-python 3.3.2\r\n"
    b"Content-Type: application/json\r\n"
    b"X-Pusher-Library: pusher-http-python 3.3.2\r\n"
    b"Content-Length: %d\r\n"
    b"\r\n" % len(BODY)
) + BODY
ANSWER = http.json_response(200, {})


def pushi(requests, pipeline):
    parser = http.RequestParser()
    chunk = REQUEST * pipeline
    done = 0
    while done < requests:
        parser.feed(chunk)
        while True:
            request = parser.next_request()
            if request is None:
                break
            assert request.body == BODY
            status, headers, body = ANSWER
            http.response(status, headers, body, request.keep_alive)
            done += 1
    return done


def h11(requests, pipeline):
    import h11

    connection = h11.Connection(h11.SERVER)
    chunk = REQUEST * pipeline
    status, headers, body = ANSWER
    code = int(status[:3])
    headers = [(name, value) for name, value in headers]
    done = 0
    while done < requests:
        connection.receive_data(chunk)
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                break
            if isinstance(event, h11.Request):
                parts = []
            elif isinstance(event, h11.Data):
                parts.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                assert b"".join(parts) == BODY
                connection.send(h11.Response(status_code=code, headers=headers))
                connection.send(h11.Data(data=body))
                connection.send(h11.EndOfMessage())
                connection.start_next_cycle()
                done += 1
    return done


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100000)
    parser.add_argument("--pipeline", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    cases = [("pushi", pushi)]
    try:
        import h11 as _h11

        cases.append(("h11 %s" % _h11.__version__, h11))
    except ImportError:
        print("h11 not installed: pushi only", file=sys.stderr)
    for name, run in cases:
        best = None
        for _ in range(args.repeat):
            started = time.perf_counter()
            count = run(args.requests, args.pipeline)
            elapsed = time.perf_counter() - started
            best = elapsed if best is None else min(best, elapsed)
        print(
            json.dumps(
                {
                    "parser": name,
                    "requests": count,
                    "pipeline": args.pipeline,
                    "us_per_request": round(best / count * 1e6, 2),
                    "requests_per_s": round(count / best),
                }
            )
        )


if __name__ == "__main__":
    main()
