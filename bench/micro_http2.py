"""Micro-benchmark of the HTTP/2 parser on h2load-against-nghttpd-like traffic (not a test).

The traffic is made in memory by the h2 library: 8 connections; requests as
h2load sends them (GET /, user-agent h2load), responses as nghttpd answers a
2-byte file (server, content-length, cache-control, date, last-modified,
etag); the date changes every DATE_EVERY exchanges, as it would once a second.
Two write patterns: one message per write ("single", h2load -m1), and ten
requests or ten responses per write ("batched", h2load -m10).

Every figure is CPU time per event, best of ROUNDS, and a ratio to a baseline
timed in the same run: the Http2Parser of git revision --baseline (default:
the commit before the native HPACK decoder), loaded from `git show`.
Run: PYTHONPATH=src .venv/bin/python bench/micro_http2.py [--baseline REV]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Protocol

import h2.config
import h2.connection

from ecapture.events import Direction, Endpoint, TlsData
from ecapture.processor.model import ConnectionInfo, HttpExchange, ProcessorItem

CONNECTIONS = 8
EXCHANGES = 4000  # per connection
DATE_EVERY = 2000
ROUNDS = 5
BATCH = 10
REPO = Path(__file__).resolve().parents[1]
DEFAULT_BASELINE = "09c6a8e"  # processor as measured at ~58 µs per HTTP/2 event
PARSER_PATH = "src/ecapture/processor/http2.py"

REQUEST = [(":method", "GET"), (":path", "/"), (":scheme", "https"),
           (":authority", "127.0.0.1:8444"), ("user-agent", "h2load nghttp2/1.52.0")]


def response_headers(index: int) -> list[tuple[str, str]]:
    second = index // DATE_EVERY
    return [(":status", "200"), ("server", "nghttpd nghttp2/1.52.0"), ("content-length", "2"),
            ("cache-control", "max-age=3600"),
            ("date", f"Wed, 25 Nov 2026 08:{second // 60:02d}:{second % 60:02d} GMT"),
            ("last-modified", "Wed, 25 Nov 2026 07:00:00 GMT"), ("etag", '"6565a000-2"')]


class Parser(Protocol):
    def feed(self, event: TlsData, from_client: bool, out: list[ProcessorItem]) -> None: ...


ParserFactory = Callable[[ConnectionInfo], Parser]


def traffic(exchanges: int, batch: int) -> list[tuple[bool, bytes]]:
    """(from_client, bytes) writes of one connection, `batch` messages a write."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None))
    writes: list[tuple[bool, bytes]] = []

    def client_writes() -> None:
        data = client.data_to_send()
        if data:
            writes.append((True, data))
            server.receive_data(data)

    def server_writes() -> None:
        data = server.data_to_send()
        if data:
            writes.append((False, data))
            client.receive_data(data)

    client.initiate_connection()
    client_writes()
    server.initiate_connection()
    server_writes()
    client_writes()  # SETTINGS ACK
    for first in range(0, exchanges, batch):
        streams = []
        for _ in range(batch):
            stream_id = client.get_next_available_stream_id()
            client.send_headers(stream_id, REQUEST, end_stream=True)
            streams.append(stream_id)
        client_writes()
        for offset, stream_id in enumerate(streams):
            server.send_headers(stream_id, response_headers(first + offset))
            server.send_data(stream_id, b"ok", end_stream=True)
        server_writes()
        for stream_id in streams:  # h2load returns the window it used
            client.acknowledge_received_data(2, stream_id)
        client_writes()
    return writes


def events(writes: list[tuple[bool, bytes]], conn_id: int) -> list[tuple[TlsData, bool]]:
    local, remote = Endpoint("127.0.0.1", 40000 + conn_id), Endpoint("127.0.0.1", 8444)
    return [
        (TlsData(
            timestamp_ns=index, pid=4242, tid=4242, uid=0, comm="h2load", conn_id=conn_id,
            fd=5, direction=Direction.SEND if from_client else Direction.RECV, call_id=index,
            call_len=len(data), offset=0, data=data, last_chunk=True, truncated=False,
            local=local, remote=remote, lost_records=0, lost_bytes=0,
        ), from_client)
        for index, (from_client, data) in enumerate(writes)
    ]


def interleave(connections: list[list[tuple[TlsData, bool]]]) -> list[tuple[int, TlsData, bool]]:
    """Round-robin over connections, as a capture of parallel clients sees them."""
    merged = []
    for step in range(max(len(c) for c in connections)):
        for conn, conn_events in enumerate(connections):
            if step < len(conn_events):
                merged.append((conn, *conn_events[step]))
    return merged


def info(conn: int) -> ConnectionInfo:
    return ConnectionInfo(pid=4242, comm="h2load", uid=0, fd=5, conn_id=conn, client=None,
                          server=None)


def run_once(factory: ParserFactory, stream: list[tuple[int, TlsData, bool]]) -> int:
    parsers = [factory(info(conn)) for conn in range(CONNECTIONS)]
    out: list[ProcessorItem] = []
    for conn, event, from_client in stream:
        parsers[conn].feed(event, from_client, out)
    return sum(1 for item in out if isinstance(item, HttpExchange) and item.complete)


def best_seconds(factory: ParserFactory, stream: list[tuple[int, TlsData, bool]]) -> float:
    expected = CONNECTIONS * EXCHANGES
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.process_time()
        done = run_once(factory, stream)
        best = min(best, time.process_time() - start)
        if done != expected:
            raise SystemExit(f"parser gave {done} complete exchanges, expected {expected}")
    return best


def load_revision(revision: str) -> ModuleType:
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{revision}:{PARSER_PATH}"],
        check=True, capture_output=True, timeout=30,
    ).stdout
    name = "ecapture.processor._http2_baseline"
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    exec(compile(source, f"{revision}:{PARSER_PATH}", "exec"), module.__dict__)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=DEFAULT_BASELINE, help="git revision to compare")
    args = parser.parse_args()
    from ecapture.processor import hpack_native
    from ecapture.processor.http2 import Http2Parser

    old = load_revision(args.baseline).Http2Parser
    candidates: dict[str, ParserFactory] = {
        f"baseline ({args.baseline})": lambda i: old(i, max_body_bytes=1 << 20),  # type: ignore[no-any-return]
        "now": lambda i: Http2Parser(i, max_body_bytes=1 << 20),
    }
    print(f"uptime: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} (1, 5 min load)")
    print(f"HPACK decoder now: {hpack_native.decoder_kind()}")
    for label, batch in (("single", 1), ("batched", BATCH)):
        writes = traffic(EXCHANGES, batch)
        stream = interleave([events(writes, conn) for conn in range(CONNECTIONS)])
        exchanges = CONNECTIONS * EXCHANGES
        print(f"\n{label}: {len(stream)} events, {exchanges} exchanges")
        base = None
        for name, factory in candidates.items():
            seconds = best_seconds(factory, stream)
            base = base or seconds
            print(f"  {name:24s} {seconds / len(stream) * 1e6:7.2f} µs/event "
                  f"{seconds / exchanges * 1e6:7.2f} µs/exchange  x{base / seconds:5.2f}")


if __name__ == "__main__":
    main()
