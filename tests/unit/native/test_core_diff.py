"""The Rust pipeline (native/src/core.rs) writes the bytes the Python one writes.

Both get the same raw ring records, in the same batches, with the same
spare-ring closes and ticks; the JSON lines they write must be identical
(the timestamps of losses stamped at the moment they are found — decode
errors, the -t total — aside). The Python pipeline, tracker and JSON writer
are the reference (src/ecapture/pipeline.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from records import address, close, data, fault

from ecapture.errors import SinkError
from ecapture.events import Clock, LossReason
from ecapture.native_path import NativePipeline
from ecapture.output.jsonl import JsonLinesWriter
from ecapture.output.sinks import FdSink, open_sink
from ecapture.pipeline import Pipeline
from ecapture.processor.tracker import ConnectionTracker

OFFSET = 1_700_000_000_000_000_000  # epoch - monotonic, fixed for both


class Collecting:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class Step:
    kind: str  # "batch", "park", "tick"
    records: list[bytes] = field(default_factory=list)


def drive(pipeline: Pipeline | NativePipeline, steps: list[Step]) -> None:
    for step in steps:
        if step.kind == "batch":
            if step.records:
                pipeline.handle_batch(step.records)
        elif step.kind == "park":
            pipeline.park(step.records)
        else:
            pipeline.tick(0)
    pipeline.finish()


def run_python(steps: list[Step], tsize: int, tracker: ConnectionTracker | None) -> bytes:
    sink = Collecting()
    drive(Pipeline([JsonLinesWriter("tls", sink, tsize=tsize)], tracker=tracker,
                   clock=Clock(OFFSET)), steps)
    return bytes(sink.data)


def run_native(steps: list[Step], tsize: int, tracker: ConnectionTracker | None) -> bytes:
    sink = Collecting()
    drive(NativePipeline("tls", sink, [], tsize=tsize, tracker=tracker, nice=0,
                         clock=Clock(OFFSET)), steps)
    return bytes(sink.data)


def normalised(output: bytes) -> list[dict[str, object]]:
    """Lines as objects, the found-now timestamps blanked."""
    events = [json.loads(line) for line in output.splitlines()]
    for event in events:
        if event["type"] == "lost" and event["reason"] in (LossReason.DECODE, LossReason.TSIZE):
            event["ts"] = None
    return events


def assert_same(steps: list[Step], tsize: int = 0, http: bool = True) -> None:
    python = run_python(steps, tsize, ConnectionTracker() if http else None)
    native = run_native(steps, tsize, ConnectionTracker() if http else None)
    assert normalised(native) == normalised(python)
    # and byte for byte where no timestamp was stamped now
    if b'"reason":"decode"' not in python and b'"reason":"tsize"' not in python:
        assert native == python


GET = b"GET /x?q=1 HTTP/1.1\r\nHost: example.test\r\nUser-Agent: wrk\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nContent-Length: 2\r\n\r\nok"
CHUNKED = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n")


def test_keep_alive_exchanges_data_and_close() -> None:
    records = []
    for index in range(3):
        records.append(data(GET, direction=1, ts=10 * index + 1))
        records.append(data(OK, direction=0, ts=10 * index + 2))
    records.append(close(ts=100))
    assert_same([Step("batch", records)])


def test_losses_of_every_kind() -> None:
    steps = [
        Step("batch", [data(GET, direction=1, ts=1, lost=2),
                       data(b"a" * 16, flags=2, call_len=100, ts=2),
                       data(b"b" * 16, flags=3, call_len=100, offset=16, ts=3),
                       fault(4000, ts=4), b"\x01\x02",
                       data(OK, direction=0, ts=5), close(lost=1, ts=6)]),
    ]
    assert_same(steps)


def test_deferred_closes_wait_for_the_main_ring() -> None:
    steps = [
        Step("batch", [data(GET, direction=1, ts=10)]),
        Step("park", [close(ts=20, deferred=True)]),
        Step("batch", [data(OK, direction=0, ts=15)]),
        Step("tick"),
        Step("batch", [data(b"other", conn_id=6, ts=21)]),
        Step("park", [close(ts=30, conn_id=6, deferred=True)]),
        Step("tick"),
        Step("tick"),
        Step("park", [close(ts=40, conn_id=9, deferred=True)]),
    ]
    assert_same(steps)


@pytest.mark.parametrize("tsize", [0, 1, 7, 100])
def test_tsize_cuts_payloads_and_bodies_alike(tsize: int) -> None:
    records = [data(GET, direction=1, ts=1), data(CHUNKED, direction=0, ts=2),
               data(bytes(range(256)) * 3, ts=3, conn_id=8)]
    assert_same([Step("batch", records)], tsize=tsize)


def test_without_http_processing() -> None:
    assert_same([Step("batch", [data(GET, direction=1, ts=1), close(ts=2)])], http=False)


def test_ipv6_unknown_endpoints_and_odd_comms() -> None:
    v6 = address("::1", 8443)
    mapped = address("::ffff:10.0.0.1", 1)
    records = [
        data(GET, direction=1, ts=1, local=v6, remote=mapped, comm=b"p\xffthon\x00junk"),
        data(OK, direction=0, ts=2, local=v6, remote=mapped, comm=b"p\xffthon\x00junk"),
        data(b"x", ts=3, conn_id=9, local=address(""), remote=address(""), fd=-1),
        close(ts=4, conn_id=9, tid=0, cause=3), close(ts=5, cause=7),
    ]
    assert_same([Step("batch", records)])


MESSAGES = [GET, OK, CHUNKED, b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
            b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close",
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabc",
            b"GET /\x1b[31m HTTP/1.1\r\nX: a\x01b\r\n\r\n", b"\x16\x03\x01garbage\r\n"]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[Step], int]:
    conns = draw(st.integers(1, 3))
    streams: list[tuple[int, int, bytes]] = []  # conn, direction, bytes
    for _ in range(draw(st.integers(1, 8))):
        conn = draw(st.integers(0, conns - 1))
        message = draw(st.sampled_from(MESSAGES))
        direction = 1 if message[:5] != b"HTTP/" else 0
        streams.append((conn, direction, message))
    records: list[tuple[str, bytes]] = []
    ts = 1
    for conn, direction, message in streams:
        pos = 0
        while pos < len(message):
            size = draw(st.integers(1, len(message) - pos))
            ts += 1
            lost = draw(st.sampled_from([0, 0, 0, 0, 1]))
            records.append(("batch", data(message[pos:pos + size], direction=direction,
                                          conn_id=100 + conn, ts=ts, lost=lost)))
            pos += size
        event = draw(st.sampled_from(["none"] * 6 + ["close", "deferred", "fault"]))
        ts += 1
        if event == "close":
            records.append(("batch", close(conn_id=100 + conn, ts=ts)))
        elif event == "deferred":
            records.append(("park", close(conn_id=100 + conn, ts=ts, deferred=True)))
        elif event == "fault":
            records.append(("batch", fault(50, conn_id=100 + conn, ts=ts)))
    steps: list[Step] = []
    for kind, record in records:
        if steps and steps[-1].kind == kind and draw(st.booleans()):
            steps[-1].records.append(record)
        else:
            steps.append(Step(kind, [record]))
        if draw(st.integers(0, 9)) == 0:
            steps.append(Step("tick"))
    return steps, draw(st.sampled_from([0, 0, 3, 64]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_random_scenarios(scenario: tuple[list[Step], int]) -> None:
    steps, tsize = scenario
    assert_same(steps, tsize=tsize)


def keep_alive_steps() -> list[Step]:
    records = []
    for index in range(40):
        records.append(data(GET, direction=1, ts=10 * index + 1))
        records.append(data(OK + b"x" * index, direction=0, ts=10 * index + 2))
    return [Step("batch", records[:30]), Step("tick"), Step("batch", records[30:]),
            Step("batch", [close(ts=1000)])]


def test_a_file_sink_is_written_by_the_core_itself_with_the_same_bytes(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    sink = open_sink(str(path))
    assert isinstance(sink, FdSink)
    direct: list[int] = []
    original = sink.write_direct

    def counting(write: Callable[[int], object], size: int) -> None:
        direct.append(size)
        original(write, size)

    sink.write_direct = counting  # type: ignore[method-assign]
    steps = keep_alive_steps()
    drive(NativePipeline("tls", sink, [], tsize=0, tracker=ConnectionTracker(), nice=0,
                         clock=Clock(OFFSET)), steps)
    sink.close()
    expected = run_python(steps, 0, ConnectionTracker())
    assert path.read_bytes() == expected
    assert direct and sum(direct) == len(expected)  # no bytes object went through the sink


def test_a_failed_direct_write_is_a_sink_error_and_the_lines_are_counted_dropped() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    sink = FdSink(write_end, "a closed pipe", owns_fd=True)
    pipeline = NativePipeline("tls", sink, [], tsize=0, tracker=ConnectionTracker(), nice=0,
                              clock=Clock(OFFSET))
    with pytest.raises(SinkError, match="a closed pipe failed: Broken pipe"):
        pipeline.handle_batch([data(GET, direction=1, ts=1)])
    dropped = sink.dropped_bytes
    assert dropped > 0
    # Dead from now on: what follows is counted, not written, and raises no second error.
    pipeline.handle_batch([data(OK, direction=0, ts=2)])
    pipeline.finish()
    assert sink.dropped_bytes > dropped
    sink.close()
