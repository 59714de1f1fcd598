"""Micro-benchmark of the whole user-space pipeline on raw records (not a test).

Raw ring records of a wrk/nginx-like HTTP/1.1 keep-alive exchange (request and
response, each seen by both ends: 4 records per request) go through
Pipeline.handle_batch: decode → tracker (HTTP parsing) → JSON lines into a
file on /dev/null. Baselines in the same run: decoding alone, and the
pipeline without the HTTP tracker. Prints µs per record and records/s.
Run: .venv/bin/python -m bench.micro_pipeline [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import socket
import struct
import time
from collections.abc import Callable

from ecapture.events import RECORD_HEADER, TLS_DATA_FIELDS, Clock, RecordKind, decode_record
from ecapture.output.jsonl import JsonLinesWriter
from ecapture.output.sinks import open_sink
from ecapture.pipeline import Pipeline
from ecapture.processor.tracker import ConnectionTracker

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8443\r\n\r\n"
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 25 Nov 2026 08:00:00 GMT\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Length: 2\r\n"
            b"Connection: keep-alive\r\n\r\nok")
BATCH = 1024
ROUNDS = 5


def _address(port: int) -> bytes:
    return struct.pack("<HH16s", socket.AF_INET, port, socket.inet_aton("127.0.0.1") + bytes(12))


def record(pid: int, conn_id: int, direction: int, payload: bytes, *, local: int,
           remote: int) -> bytes:
    header = RECORD_HEADER.pack(RecordKind.TLS_DATA, pid, pid, 0, time.monotonic_ns(),
                                conn_id, 0x55D000000000 + conn_id, 4096 + conn_id,
                                b"wrk" if pid == 1 else b"nginx")
    fields = TLS_DATA_FIELDS.pack(5, direction, 1, 0, len(payload), 0, len(payload), 0, 0,
                                  _address(local), _address(remote))
    return header + fields + payload


def workload(requests: int, connections: int = 8) -> list[bytes]:
    records = []
    for index in range(requests):
        conn = index % connections
        client, server = 40000 + conn, 8443
        records += [
            record(1, 0x1000 + conn, 1, REQUEST, local=client, remote=server),  # wrk writes
            record(2, 0x2000 + conn, 0, REQUEST, local=server, remote=client),  # nginx reads
            record(2, 0x2000 + conn, 1, RESPONSE, local=server, remote=client),  # nginx writes
            record(1, 0x1000 + conn, 0, RESPONSE, local=client, remote=server),  # wrk reads
        ]
    return records


def best_us(run: Callable[[], None], count: int) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best / count * 1e6


def pipeline_run(records: list[bytes], *, http: bool) -> Callable[[], None]:
    def run() -> None:
        sink = open_sink(os.devnull)
        tracker = ConnectionTracker() if http else None
        pipeline = Pipeline([JsonLinesWriter("tls", sink)], tracker=tracker, clock=Clock())
        for start in range(0, len(records), BATCH):
            pipeline.handle_batch(records[start:start + BATCH])
        pipeline.finish()
        sink.close()
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=25_000)
    parser.add_argument("--profile", action="store_true", help="cProfile the full pipeline")
    args = parser.parse_args()
    records = workload(args.requests)
    count = len(records)
    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(pipeline_run(records, http=True))
        pstats.Stats(profile).sort_stats("tottime").print_stats(20)
        return
    clock = Clock()
    decode = best_us(lambda: [decode_record(raw, clock) for raw in records], count)
    no_http = best_us(pipeline_run(records, http=False), count)
    full = best_us(pipeline_run(records, http=True), count)
    print(f"load average {os.getloadavg()[0]:.2f}; {count} records of a keep-alive exchange")
    for name, value in (("decode only", decode), ("pipeline, no HTTP parsing", no_http),
                        ("pipeline, HTTP parsing (default)", full)):
        print(f"{name:34s} {value:6.2f} µs/record  {1e6 / value / 1e3:7.0f}k records/s  "
              f"ratio to decode {value / decode:4.1f}")


if __name__ == "__main__":
    main()
