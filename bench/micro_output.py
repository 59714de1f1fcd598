"""Micro-benchmark of the writers (not a test).

Data events: JsonLinesWriter.write() for every event plus flush() once per
batch into a real FdSink on /dev/null (so the sink's buffer copy and the OS
write are included), against two baselines timed in the same run:
  floor:  msgspec encode_lines of pre-built structs (encoding alone);
  stdlib: json.dumps of a dict with base64 done by the base64 module.

HTTP exchanges (`--http`): write() + flush() per batch for the JSON and the
text writer on the common case (small text body, no content coding, a few
headers), in four shapes of header tuples: shared by every exchange (the
parser memoises repeated heads), equal but freshly built, with one of 60
Date values (a minute of a server's clock), and with an X-Request-Id that
no other exchange has.
`--baseline REV` loads src/ecapture/output as it was at git revision REV
under another package name and times it interleaved with the current code,
so the ratio is from one process.
Run: .venv/bin/python -m bench.micro_output [--http] [--baseline REV]
"""

from __future__ import annotations

import argparse
import base64
import importlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from datetime import UTC
from pathlib import Path
from types import ModuleType

import msgspec

from ecapture.events import Direction, Endpoint, TlsData
from ecapture.output.jsonl import DataEvent, JsonLinesWriter
from ecapture.output.sinks import FdSink
from ecapture.processor.model import ConnectionInfo, HttpExchange, HttpRequest, HttpResponse

BATCH = 256
ROUNDS = 5
BASELINE_PACKAGE = "ecapture_baseline_output"


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
                  e.ssl, e.socket_cookie, "send", "127.0.0.1:443", "127.0.0.1:51234",
                  e.call_len, 0, False, e.data)
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
                    "conn_id": e.conn_id, "ssl": e.ssl, "socket_cookie": e.socket_cookie,
                    "direction": e.direction.label,
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


# -- HTTP exchanges ------------------------------------------------------

REQUEST_HEAD = ((b"Host", b"127.0.0.1:8443"), (b"User-Agent", b"wrk/4.2"),
                (b"Accept", b"*/*"))
RESPONSE_HEAD = ((b"Server", b"nginx/1.22.1"), (b"Date", b"Wed, 25 Nov 2026 08:00:00 GMT"),
                 (b"Content-Type", b"text/html"), (b"Content-Length", b"57"),
                 (b"Connection", b"keep-alive"), (b"ETag", b'"6566b5c8-39"'))
RESPONSE_BODY = b"<html><body><h1>It works, and it is small.</h1></body></html>"[:57]


def _fresh(head: tuple[tuple[bytes, bytes], ...]) -> tuple[tuple[bytes, bytes], ...]:
    """Equal header bytes in new objects, as a parser without memo yields them."""
    return tuple((bytes(bytearray(name)), bytes(bytearray(value))) for name, value in head)


def make_exchanges(shape: str, count: int = BATCH) -> list[HttpExchange]:
    connection = ConnectionInfo(pid=1234, comm="wrk", uid=0, fd=5, conn_id=0x1000,
                                client=Endpoint("127.0.0.1", 40000),
                                server=Endpoint("127.0.0.1", 8443))
    exchanges = []
    for index in range(count):
        request_head, response_head = REQUEST_HEAD, RESPONSE_HEAD
        if shape != "shared":
            request_head, response_head = _fresh(REQUEST_HEAD), _fresh(RESPONSE_HEAD)
        if shape == "varied":
            date = f"Wed, 25 Nov 2026 08:00:{index % 60:02d} GMT".encode()
            response_head = (response_head[0], (b"Date", date), *response_head[2:])
        if shape == "unique":
            response_head = (*response_head, (b"X-Request-Id", f"{index:032x}".encode()))
        started = 1_700_000_000_000_000_000 + index * 1000
        exchanges.append(HttpExchange(
            connection=connection,
            request=HttpRequest("GET", "/", "127.0.0.1:8443", None, "HTTP/1.1", request_head,
                                b""),
            response=HttpResponse(200, "OK", "HTTP/1.1", response_head, RESPONSE_BODY),
            started_ns=started, finished_ns=started + 80_000,
        ))
    return exchanges


def load_baseline(revision: str, into: Path) -> ModuleType:
    """src/ecapture/output at `revision`, importable as BASELINE_PACKAGE."""
    archive = subprocess.run(
        ["git", "archive", revision, "src/ecapture/output"], check=True, capture_output=True,
        timeout=60,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    package = into / BASELINE_PACKAGE
    (into / "src" / "ecapture" / "output").rename(package)
    for module in package.glob("*.py"):
        module.write_text(module.read_text().replace("ecapture.output", BASELINE_PACKAGE))
    sys.path.insert(0, str(into))
    return importlib.import_module(BASELINE_PACKAGE)


def measure_http(writer_classes: dict[str, tuple[type, type]], count: int) -> None:
    batches = count // BATCH
    total = batches * BATCH
    devnull = os.open(os.devnull, os.O_WRONLY)
    sink = FdSink(devnull, os.devnull, owns_fd=True)
    for shape in ("shared", "fresh", "varied", "unique"):
        exchanges = make_exchanges(shape, total if shape == "unique" else BATCH)
        passes = 1 if shape == "unique" else batches
        results: dict[str, dict[str, float]] = {}
        for _ in range(2):  # interleaved twice; the best of each is kept
            for label, (json_class, text_class) in writer_classes.items():
                writers = {"json": json_class("tls", sink),
                           "text": text_class("tls", sink, timezone=UTC)}
                for kind, writer in writers.items():

                    def run(writer: object = writer, exchanges: list[HttpExchange] = exchanges,
                            passes: int = passes) -> None:
                        for _ in range(passes):
                            for start in range(0, len(exchanges), BATCH):
                                for exchange in exchanges[start:start + BATCH]:
                                    writer.write(exchange)  # type: ignore[attr-defined]
                                writer.flush()  # type: ignore[attr-defined]

                    value = best_per_event(run, total)
                    best = results.setdefault(label, {})
                    best[kind] = min(best.get(kind, value), value)
        line = [f"http {shape:6s}"]
        for kind in ("json", "text"):
            parts = [f"{label} {times[kind]:6.2f}" for label, times in results.items()]
            ratio = ""
            if "baseline" in results:
                speedup = results["baseline"][kind] / results["current"][kind]
                ratio = f" (baseline/current {speedup:4.2f})"
            line.append(f"{kind}: " + ", ".join(parts) + f" µs/exchange{ratio}")
        print(" | ".join(line))
    sink.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--http", action="store_true", help="time HTTP exchanges only")
    parser.add_argument("--baseline", metavar="REV",
                        help="also time src/ecapture/output as of git revision REV")
    parser.add_argument("--exchanges", type=int, default=51_200)
    args = parser.parse_args()
    print(f"load: {os.getloadavg()[0]:.2f}")
    if not args.http:
        measure(64, 256_000)
        measure(1024, 128_000)
        measure(16384, 12_800)
        return
    from ecapture.output.text import TextWriter

    classes: dict[str, tuple[type, type]] = {"current": (JsonLinesWriter, TextWriter)}
    with tempfile.TemporaryDirectory() as directory:
        if args.baseline:
            baseline = load_baseline(args.baseline, Path(directory))
            classes = {"baseline": (baseline.JsonLinesWriter, baseline.TextWriter), **classes}
        measure_http(classes, args.exchanges)


if __name__ == "__main__":
    main()
