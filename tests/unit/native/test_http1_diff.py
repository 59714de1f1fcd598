"""The Rust tracker (native/src/tracker.rs, http1.rs, sniff.rs) against the
Python one, the reference: the same events in, the same items out.

Both trackers are driven call by call with the same TlsData, ConnClose and
ReadFault objects, and after every call the items must be equal (Python's
`Unparsed` left out: the Rust core has no such item, native/src/model.rs
says why). Three sources of event sequences:
- every tracker test of tests/unit/processor/ (test_http1*.py,
  test_tracker.py, the tracker tests of test_fuzz.py), run again with a
  `TwinTracker` in place of ConnectionTracker: their own assertions hold on
  the Python items, and each call is compared;
- hypothesis sessions: real exchanges cut anywhere, pipelined, with random
  garbage, control bytes in values, lost records, read faults, truncated
  calls, closes, several connections, SSL* reuse and evictions from a small
  max_connections;
- single heads, read by http1.rs's parse_head and by Python's _parse_head.

An HTTP/2 connection is not compared: the Rust tracker is built here without
the HTTP/2 parser (native/src/http2.rs is plugged in by the lead).
"""

from __future__ import annotations

import functools
import inspect
import itertools
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from processor import (  # tests/unit/processor, the Python tracker's own tests
    factories,
    test_fuzz,
    test_http1,
    test_http1_fast_paths,
    test_http1_hostile,
    test_tracker,
)
from processor.factories import RECV, SEND, conn_close, recording, tls_data

from ecapture import _native
from ecapture.events import ConnClose, Direction, Lost, ReadFault, TlsData
from ecapture.processor import http1
from ecapture.processor.http2 import Http2Parser
from ecapture.processor.model import HttpExchange, ProcessorItem, Unparsed
from ecapture.processor.tracker import ConnectionTracker

Key = tuple[int, int]


def _key(item: object) -> Key | None:
    if isinstance(item, HttpExchange):
        return (item.connection.pid, item.connection.conn_id)
    if isinstance(item, Lost) and item.pid is not None and item.conn_id is not None:
        return (item.pid, item.conn_id)
    return None


class TwinTracker:
    """A ConnectionTracker that is two: the Python one, whose items it
    returns, and the Rust one, whose items must equal them at every call."""

    def __init__(self, **options: Any) -> None:
        self.python = ConnectionTracker(**options)
        self.rust = _native.DiffTracker(**options)
        self.http2: set[Key] = set()  # connections only Python parses

    def _same(self, python: list[ProcessorItem], rust: list[object], call: str) -> None:
        expected = [
            item for item in python
            if not isinstance(item, Unparsed) and _key(item) not in self.http2
        ]
        got = [item for item in rust if _key(item) not in self.http2]
        if got != expected:
            lines = [f"{call}: Rust and Python differ"]
            for index, (mine, theirs) in enumerate(itertools.zip_longest(got, expected)):
                mark = "  " if mine == theirs else "!!"
                lines.append(f"{mark} {index} rust   {mine!r}")
                if mine != theirs:
                    lines.append(f"{mark} {index} python {theirs!r}")
            raise AssertionError("\n".join(lines))

    def feed(self, event: TlsData) -> list[ProcessorItem]:
        items = self.python.feed(event)
        connection = self.python._connections.get((event.pid, event.conn_id))
        if connection is not None and isinstance(connection.parser, Http2Parser):
            self.http2.add((event.pid, event.conn_id))
        self._same(items, self.rust.feed(event), f"feed {event!r}")
        assert len(self.rust) == len(self.python)
        return items

    def close(self, event: ConnClose) -> list[ProcessorItem]:
        items = self.python.close(event)
        self._same(items, self.rust.close(event), f"close {event!r}")
        assert len(self.rust) == len(self.python)
        return items

    def fault(self, event: ReadFault) -> None:
        self.python.fault(event)
        self.rust.fault(event)

    def flush(self) -> list[ProcessorItem]:
        items = self.python.flush()
        self._same(items, self.rust.flush(), "flush")
        assert len(self.rust) == len(self.python) == 0
        return items

    def __len__(self) -> int:
        return len(self.python)


# -- the processor's own tests, twinned ------------------------------------------

_MODULES = [factories, test_http1, test_http1_hostile, test_http1_fast_paths, test_tracker,
            test_fuzz]
# tests that never reach a tracker (parsers and decoders on their own)
_NO_TRACKER = {
    "test_http1_parser_directly", "test_http2_parser_directly", "test_decode_body_never_raises",
    "test_lenient_reader_agrees_with_llhttp_lenient_mode",
    "test_memoised_head_equals_a_fresh_parse", "test_start_lines_that_are_not_http_still_desync",
    "test_lenient_reader_agrees_with_llhttp_where_llhttp_accepts",
}


def _twinned(test: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        with ExitStack() as stack:
            for module in _MODULES:
                if hasattr(module, "ConnectionTracker"):
                    stack.enter_context(
                        mock.patch.object(module, "ConnectionTracker", TwinTracker))
            test(*args, **kwargs)
    return run


def _processor_tests() -> Iterator[tuple[str, Callable[..., None]]]:
    for module in _MODULES[1:]:
        for name, test in inspect.getmembers(module, inspect.isfunction):
            if name.startswith("test_") and test.__module__ == module.__name__ \
                    and name not in _NO_TRACKER:
                yield f"{module.__name__.rsplit('.', 1)[-1]}__{name}", test


for _name, _test in _processor_tests():
    globals()[f"test_twin__{_name}"] = _twinned(_test)


# -- hypothesis sessions ---------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
RECORDINGS = ["h1_keepalive", "h1_chunked_gzip", "h1_head_then_get", "h1_status_codes",
              "h1_pipelined", "curl_nginx_h1", "h1_hostile_headers"]
Stream = list[tuple[Direction, bytes]]

_garbage = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([
        b"GET / HTTP/1.1\r\n", b"HTTP/1.1 200 OK\r\n", b"\r\n", b"\n", b"0\r\n\r\n",
        b"Content-Length: 3\r\n", b"Transfer-Encoding: chunked\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n", b"HEAD /h HTTP/1.1\r\n\r\n",
        b"CONNECT a:1 HTTP/1.1\r\n\r\n", b"HTTP/1.1 101 Up\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n",
        b"5\r\nhello\r\n", b"GET / HTTP/2.0\r\n\r\n", b"\rGET / HTTP/1.1",
        b"X: \x1b\x00\x7f\r\n", b" folded\r\n", b"RTSP/1.0 200 OK\r\n\r\n",
        b"\x00\x00\x00\x04\x00\x00\x00\x00\x00", b"Content-Length: 4, 4\r\n",
        b"Content-Length: 99999999999999999999999\r\n",
    ]),
)


@st.composite
def _recorded(draw: st.DrawFn) -> Stream:
    stream = recording(draw(st.sampled_from(RECORDINGS)))
    if draw(st.booleans()):
        stream = factories.flipped(stream)
    return stream


@st.composite
def _hostile(draw: st.DrawFn) -> Stream:
    stream, _ = draw(test_fuzz.hostile_exchanges())
    return stream


@st.composite
def _mixed(draw: st.DrawFn) -> Stream:
    """Pieces of real streams with garbage between them, in either direction."""
    stream: Stream = []
    for _ in range(draw(st.integers(1, 6))):
        if draw(st.integers(0, 2)) == 0:
            stream.append((draw(st.sampled_from([SEND, RECV])), draw(_garbage)))
        else:
            stream += draw(test_http1_fast_paths.keepalive_streams())
    return stream


def _recut(draw: st.DrawFn, stream: Stream) -> Stream:
    how = draw(st.sampled_from(["whole", "bytes", "sizes", "random"]))
    if how == "whole":
        return stream
    if how == "bytes":
        return [(direction, data[i : i + 1]) for direction, data in stream
                for i in range(len(data))]
    if how == "sizes":
        size = draw(st.integers(2, 40))
        return [(direction, data[i : i + size]) for direction, data in stream
                for i in range(0, len(data), size)]
    out: Stream = []
    for direction, data in stream:
        cuts = draw(st.lists(st.integers(0, max(0, len(data))), max_size=3))
        out += [(direction, piece) for piece in test_http1_fast_paths._cut(data, cuts)]
    return out


@st.composite
def sessions(draw: st.DrawFn) -> tuple[dict[str, Any], list[tuple[str, object]]]:
    """Tracker options and a sequence of calls over 1-4 connections."""
    options = {
        "max_connections": draw(st.sampled_from([1, 2, 3, 16384])),
        "max_body_bytes": draw(st.sampled_from([0, 3, 64, 8 << 20])),
        "parse_http": draw(st.sampled_from([True, True, True, True, False])),
    }
    pid = factories.PID
    connections = draw(st.integers(1, 4))
    ssl_values = draw(st.lists(st.sampled_from([0, 0, 0x10, 0x20]), min_size=connections,
                               max_size=connections))
    per_connection = []
    for index in range(connections):
        source = draw(st.sampled_from([_recorded, _hostile, _mixed, _mixed]))
        per_connection.append([(index, direction, data)
                               for direction, data in _recut(draw, draw(source()))])
    # interleave the connections, keeping each one's order
    queues = [list(reversed(pieces)) for pieces in per_connection]
    order: list[tuple[int, Direction, bytes]] = []
    while any(queues):
        index = draw(st.sampled_from([i for i, queue in enumerate(queues) if queue]))
        order.append(queues[index].pop())
    calls: list[tuple[str, object]] = []
    timestamp = itertools.count(1000)
    conn_ids = list(range(1, connections + 1))
    unknown_first = draw(st.booleans())  # first chunks without fd and addresses
    seen: set[int] = set()
    for index, direction, recorded in order:
        data = recorded
        conn_id = conn_ids[index]
        roll = draw(st.integers(0, 99))
        if roll < 4:
            continue  # this chunk is lost: the next one says so
        if roll < 8:
            calls.append(("fault", ReadFault(
                timestamp_ns=next(timestamp), pid=pid, tid=pid, uid=1000, comm="curl",
                conn_id=conn_id, fd=7, direction=direction, call_id=0, call_len=len(data),
                offset=0, bytes=len(data), ssl=ssl_values[index])))
        if roll in (8, 9) and data:
            flip = draw(st.integers(0, len(data) - 1))
            data = data[:flip] + bytes([data[flip] ^ draw(st.integers(1, 255))]) + data[flip + 1 :]
        if roll == 10 and seen:
            calls.append(("close", conn_close(timestamp_ns=next(timestamp), pid=pid,
                                              conn_id=conn_ids[draw(st.sampled_from(sorted(seen)))])))
        if roll == 11:
            conn_ids[index] += 100  # the SSL* moves on to a new connection, its close lost
            conn_id = conn_ids[index]
        event = tls_data(data, direction, timestamp_ns=next(timestamp), conn_id=conn_id, pid=pid,
                         lost_records=1 if 12 <= roll < 16 else 0,
                         truncated=16 <= roll < 18, ssl=ssl_values[index],
                         fd=-1 if unknown_first and index not in seen else 7 + index)
        if unknown_first and index not in seen:
            event = TlsData(**{**{f: getattr(event, f) for f in event.__struct_fields__},
                               "local": None, "remote": None})
        seen.add(index)
        calls.append(("feed", event))
    for index in sorted(seen):
        if draw(st.booleans()):
            calls.append(("close", conn_close(timestamp_ns=next(timestamp), pid=pid,
                                              conn_id=conn_ids[index])))
    calls.append(("flush", None))
    return options, calls


def _replay(options: dict[str, Any], calls: list[tuple[str, object]]) -> None:
    tracker = TwinTracker(**options)
    for call, event in calls:
        if call == "feed":
            assert isinstance(event, TlsData)
            tracker.feed(event)
        elif call == "fault":
            assert isinstance(event, ReadFault)
            tracker.fault(event)
        elif call == "close":
            assert isinstance(event, ConnClose)
            tracker.close(event)
        else:
            tracker.flush()


@FUZZ
@given(session=sessions())
def test_sessions_give_the_same_items(session: tuple[dict[str, Any], list[tuple[str, object]]]
                                      ) -> None:
    _replay(*session)


@FUZZ
@given(chunks=st.lists(st.tuples(st.sampled_from([SEND, RECV]), _garbage, st.integers(0, 9)),
                       max_size=16),
       start=test_fuzz.starts.filter(lambda start: not start.startswith(b"PRI")))
def test_garbage_gives_the_same_items(chunks: list[tuple[Direction, bytes, int]], start: bytes
                                      ) -> None:
    tracker = TwinTracker(max_body_bytes=64)
    tracker.feed(tls_data(start, SEND, timestamp_ns=0))
    for index, (direction, data, roll) in enumerate(chunks, 1):
        tracker.feed(tls_data(data, direction, timestamp_ns=index,
                              lost_records=int(roll == 0), truncated=roll == 1))
    tracker.close(conn_close())
    tracker.flush()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=test_http1_fast_paths.keepalive_streams())
def test_cold_and_warm_head_caches_give_the_same_items(stream: Stream) -> None:
    """http1.rs's head cache (a memo per direction, a shared LRU) is only a
    cache: with it emptied before every chunk the items are the same."""
    def items(cold: bool) -> list[object]:
        tracker = _native.DiffTracker()
        out: list[object] = []
        for index, (direction, data) in enumerate(stream):
            if cold:
                _native.diff_clear_head_cache()
            out += tracker.feed(tls_data(data, direction, timestamp_ns=index))
        return out + tracker.close(conn_close())
    assert items(cold=True) == items(cold=False)


def test_head_cache_is_bounded() -> None:
    _native.diff_clear_head_cache()
    tracker = TwinTracker()
    for index in range(http1.HEAD_CACHE_SIZE + 50):
        tracker.feed(tls_data(b"GET /%d HTTP/1.1\r\n\r\n" % index, SEND))
        tracker.feed(tls_data(b"HTTP/1.1 204 No Content\r\n\r\n", RECV))
    big = b"GET / HTTP/1.1\r\nX-Big: " + b"b" * http1.MAX_CACHED_HEAD + b"\r\n\r\n"
    tracker.feed(tls_data(big, SEND))
    tracker.feed(tls_data(b"HTTP/1.1 204 No Content\r\n\r\n", RECV))
    assert _native.diff_head_cache_len() == (http1.HEAD_CACHE_SIZE, 1)


def test_one_direction_only_keeps_memory_bounded() -> None:
    tracker = TwinTracker()
    for index in range(200):
        tracker.feed(tls_data(b"GET /%d HTTP/1.1\r\n\r\n" % index, SEND))
    tracker.flush()


def test_gap_after_held_chunks_that_start_a_parser() -> None:
    """A held chunk (it opened like an HTTP/2 SETTINGS frame) holds a start
    line; a gap then scans it and starts a parser, which gets the next chunk
    (the Python tracker raised IndexError here until this test found it)."""
    rust = _native.DiffTracker()
    held = tls_data(b"\0\0\0\x04\0\0\0\0\0\nGET / HTTP/1.1\r\n\r\n", SEND)
    assert rust.feed(held) == []
    after = tls_data(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", RECV, lost_records=1)
    (exchange,) = rust.feed(after)
    assert isinstance(exchange, HttpExchange) and exchange.response is not None
    assert exchange.response.body == b"ok"
    python = ConnectionTracker()
    python.feed(held)
    assert [item for item in python.feed(after) if not isinstance(item, Unparsed)] == [exchange]


# -- single heads ------------------------------------------------------------------

_HEAD_FIELDS = ("method", "target", "authority", "status", "reason", "version", "headers",
                "transfer_encoding", "chunked", "content_length", "bad_length", "size")


def _python_head(head: bytes, is_request: bool) -> tuple[object, ...] | None:
    parsed = http1._parse_head(head, is_request)
    if parsed is None:
        return None
    return tuple(getattr(parsed, name) for name in _HEAD_FIELDS)


def _same_head(head: bytes, is_request: bool) -> None:
    expected = _python_head(head, is_request)
    got = _native.diff_parse_head(head, is_request)
    if expected is not None and expected[9] is not None and expected[9] >= 1 << 64:
        # Python's int has no bound; Rust saturates a length past u64
        expected = (*expected[:9], (1 << 64) - 1, *expected[10:])
    assert got == expected, head


_START_LINES = [
    b"GET / HTTP/1.1", b"POST /a?b=c HTTP/1.0", b"GET  /  HTTP/1.1", b"FOO /x HTTP/1.1",
    b"get / HTTP/1.1", b"GET / HTTP/1.2", b"GET / HTTP/2.0", b"GET / HTTP/0.9", b"GET / RTSP/1.0",
    b"DESCRIBE / RTSP/1.0", b"SOURCE / ICE/1.0", b"GET http://a/b HTTP/1.1", b"GET a:b HTTP/1.1",
    b"CONNECT a:443 HTTP/1.1", b"GET /\xff HTTP/1.1", b"GET /a b HTTP/1.1", b"GET HTTP/1.1",
    b"\rGET / HTTP/1.1", b"\r\rGET / HTTP/2.0", b"\nGET / HTTP/1.1", b"GET / HTTP/1.1 ",
    b"HTTP/1.1 200 OK", b"HTTP/1.1 200", b"HTTP/1.1 200 ", b"HTTP/1.0 404 \xff\x1b",
    b"HTTP/2.0 200 OK", b"HTTP/0.9 204 X", b"RTSP/1.0 200 OK", b"ICE/1.0 200 OK",
    b"HTTP/1.1  200 OK", b"HTTP/1.1 20 OK", b"HTTP/1.1 2000 OK", b"\rHTTP/1.1 200 OK",
    b"HTTP/1.1 200 O\rK", b"HTTP/1.1 200OK", b"", b"PRI * HTTP/2.0",
    # HTTP/0.9 request lines (no protocol), and URLs llhttp parses
    b"GET /", b"OPTIONS *", b"CONNECT a:1", b"DESCRIBE /", b"PRI /", b"GET http://a",
    b"GET /\n", b"GET http://a|b/ HTTP/1.1", b"GET http://u@h:1/p?q#f HTTP/1.1",
    b"CONNECT  HTTP/1.1", b"GET /#x", b"SOURCE / ICE/2.0", b"GET ftp:/x HTTP/1.1",
]
_FIELD_LINES = [
    b"Host: example.test", b"Content-Length: 5", b"Content-Length: 5, 5", b"Content-Length: 4, 5",
    b"Content-Length: 05", b"Content-Length: ", b"Content-Length: +5", b"content-length:\t7\t",
    b"Content-Length: 18446744073709551615", b"Content-Length: 18446744073709551616",
    b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip", b"Transfer-Encoding: chunked, gzip",
    b"Transfer-Encoding: gzip, chunked", b"Transfer-Encoding: ", b"transfer-encoding: Chunked ",
    b"X-Esc: \x1b[31m", b"X-Nul: \x00", b"X(y): z", b"X-A : v", b"no colon", b": empty",
    b" folded", b"\tfolded too", b"X-Obs: \xc3\xa9\xff", b"X-Cr: a\rb", b"X-Del: \x7f",
    b"Connection: upgrade", b"Upgrade: websocket", b"X-Trailing: v \t", b"X-Empty:",
]


@st.composite
def heads(draw: st.DrawFn) -> tuple[bytes, bool]:
    start = draw(st.one_of(st.sampled_from(_START_LINES), st.binary(max_size=24)))
    lines = draw(st.lists(st.one_of(st.sampled_from(_FIELD_LINES), st.binary(max_size=16)),
                          max_size=6))
    ends = st.sampled_from([b"\r\n", b"\r\n", b"\n"])
    head = start + draw(ends) + b"".join(line + draw(ends) for line in lines) + draw(ends)
    if draw(st.booleans()):
        head += draw(st.sampled_from([b"body", b"\r\n\r\n", b"x\r\n\r\n"]))
    is_request = draw(st.booleans()) if draw(st.integers(0, 3)) == 0 \
        else not head.lstrip(b"\r\n").startswith((b"HTTP/", b"RTSP/", b"ICE/"))
    return head, is_request


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=heads())
def test_heads_read_the_same(case: tuple[bytes, bool]) -> None:
    head, is_request = case
    # the parser hands on what ends at the first CRLF CRLF, else at a blank line
    end = head.find(b"\r\n\r\n")
    if end >= 0:
        head = head[: end + 4]
    _same_head(head, is_request)


@pytest.mark.parametrize("start", _START_LINES)
@pytest.mark.parametrize("field", [b"", *_FIELD_LINES])
def test_listed_heads_read_the_same(start: bytes, field: bytes) -> None:
    is_request = not start.lstrip(b"\r\n").startswith((b"HTTP/", b"RTSP/", b"ICE/"))
    lines = [field] if field else []
    for end in (b"\r\n", b"\n"):
        _same_head(start + end + b"".join(line + end for line in lines) + b"\r\n", is_request)


def test_many_fields_are_read_past_httparse_slots() -> None:
    head = b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: %d\r\n" % (i, i) for i in range(200))
    _same_head(head + b"\r\n", True)
    _same_head(b"HTTP/1.1 200 OK\r\n" + head[16:] + b"\r\n", False)
