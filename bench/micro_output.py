"""Micro-benchmark of the JSON lines writer on data events (not a test).

Times JsonLinesWriter.write() for every event plus flush() once per batch
into a real FdSink on /dev/null (so the sink's buffer copy and the OS write
are included), against two baselines timed in the same run:
  floor:  msgspec encode_lines of pre-built structs (encoding alone);
  stdlib: json.dumps of a dict with base64 done by the base64 module.
Run: PYTHONPATH=src .venv/bin/python bench/micro_output.py
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable

import msgspec

from ecapture.events import Direction, Endpoint, TlsData
from ecapture.output.jsonl import DataEvent, JsonLinesWriter
from ecapture.output.sinks import FdSink

BATCH = 256
ROUNDS = 5


def make_event(size: int, index: int) -> TlsData:
    return TlsData(
        timestamp_ns=1_700_000_000_000_000_000 + index, pid=4242, tid=4243, uid=0,
        comm="nginx", conn_id=0x7F00DEADBEEF, fd=5, direction=Direction.SEND, call_id=index,
        call_len=size, offset=0, data=os.urandom(size), last_chunk=True, truncated=False,
        local=Endpoint("127.0.0.1", 443), remote=Endpoint("127.0.0.1", 51234),
        lost_records=0, lost_bytes=0,
    )


def best_per_event(run: Callable[[], None], count: int) -> float:
    """Best of ROUNDS, in µs per event (the least disturbed run)."""
    times = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times) / count * 1e6


def measure(size: int, count: int) -> None:
    events = [make_event(size, index) for index in range(BATCH)]
    batches = count // BATCH
    devnull = os.open(os.devnull, os.O_WRONLY)
    sink = FdSink(devnull, os.devnull, owns_fd=True)
    writer = JsonLinesWriter("tls", sink)

    def ours() -> None:
        for _ in range(batches):
            for event in events:
                writer.write(event)
            writer.flush()

    encoder = msgspec.json.Encoder()
    structs = [
        DataEvent("data", "tls", e.timestamp_ns, e.pid, e.tid, e.comm, e.uid, e.fd, e.conn_id,
                  "send", "127.0.0.1:443", "127.0.0.1:51234", e.call_len, 0, False, e.data)
        for e in events
    ]

    def floor() -> None:
        for _ in range(batches):
            encoder.encode_lines(structs)

    def stdlib() -> None:
        for _ in range(batches):
            out = []
            for e in events:
                out.append(json.dumps({
                    "type": "data", "module": "tls", "ts": e.timestamp_ns, "pid": e.pid,
                    "tid": e.tid, "comm": e.comm, "uid": e.uid, "fd": e.fd,
                    "conn_id": e.conn_id, "direction": e.direction.label,
                    "src": str(e.src), "dst": str(e.dst), "len": e.call_len,
                    "offset": e.offset, "truncated": e.truncated,
                    "payload_b64": base64.b64encode(e.data).decode("ascii"),
                }))
            "\n".join(out).encode()

    total = batches * BATCH
    ours_us = best_per_event(ours, total)
    floor_us = best_per_event(floor, total)
    stdlib_us = best_per_event(stdlib, total)
    sink.close()
    print(f"{size:>6} B payload: writer+sink {ours_us:6.2f} µs/event "
          f"({size / ours_us:7.1f} MB/s) | encode-only floor {floor_us:6.2f} µs "
          f"(writer/floor {ours_us / floor_us:4.2f}) | stdlib json {stdlib_us:6.2f} µs "
          f"(writer/stdlib {ours_us / stdlib_us:4.2f})")


def main() -> None:
    print(f"load: {os.getloadavg()[0]:.2f}")
    measure(64, 256_000)
    measure(1024, 128_000)
    measure(16384, 12_800)


if __name__ == "__main__":
    main()
