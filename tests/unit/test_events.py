"""Decoding kernel records into typed events (no root)."""

from __future__ import annotations

import socket
import struct

import pytest

from ecapture.errors import DecodeError
from ecapture.events import (
    CONN_CLOSE_FIELDS,
    DATA_FLAG_LAST_CHUNK,
    DATA_FLAG_READ_FAULT,
    RECORD_HEADER,
    TLS_DATA_FIELDS,
    Clock,
    CloseCause,
    ConnClose,
    Direction,
    Endpoint,
    ReadFault,
    RecordKind,
    TlsData,
    decode_record,
)

CLOCK = Clock(offset_ns=1_000)


SSL = 0x55AA00112233
COOKIE = 0x1000000004D2


def header(kind: int, *, pid: int = 42, tid: int = 43, comm: bytes = b"curl",
           conn_id: int = 17, cookie: int = COOKIE) -> bytes:
    return RECORD_HEADER.pack(kind, pid, tid, 1000, 5_000, conn_id, SSL, cookie, comm)


def close_fields(fd: int = 9, lost_records: int = 0, lost_bytes: int = 0, cause: int = 1,
                 flags: int = 0) -> bytes:
    return CONN_CLOSE_FIELDS.pack(fd, lost_records, lost_bytes, cause, flags)


def data_record(payload: bytes, *, direction: int = 1, flags: int = 1, lost: int = 0,
                family: int = socket.AF_INET, data_len: int | None = None) -> bytes:
    local = socket.inet_aton("127.0.0.1") + bytes(12)
    remote = socket.inet_aton("10.1.2.3") + bytes(12)
    fields = TLS_DATA_FIELDS.pack(
        7, direction, flags, 99, len(payload), 0,
        len(payload) if data_len is None else data_len, lost, lost * 10,
        struct.pack("<HH16s", family, 40000, local), struct.pack("<HH16s", family, 443, remote),
    )
    return header(RecordKind.TLS_DATA) + fields + payload


def test_data_record_decodes_every_field() -> None:
    event = decode_record(data_record(b"GET / HTTP/1.1\r\n"), CLOCK)
    assert isinstance(event, TlsData)
    assert event.data == b"GET / HTTP/1.1\r\n"
    assert (event.pid, event.tid, event.uid, event.comm) == (42, 43, 1000, "curl")
    assert event.timestamp_ns == 6_000
    assert event.conn_id == 17
    assert event.ssl == SSL and event.socket_cookie == COOKIE
    assert event.fd == 7
    assert event.direction is Direction.SEND
    assert event.call_id == 99 and event.call_len == 16 and event.offset == 0
    assert event.last_chunk and not event.truncated
    assert event.local == Endpoint("127.0.0.1", 40000)
    assert event.remote == Endpoint("10.1.2.3", 443)
    # A send goes from the local end to the remote one.
    assert str(event.src) == "127.0.0.1:40000" and str(event.dst) == "10.1.2.3:443"


def test_recv_swaps_src_and_dst() -> None:
    event = decode_record(data_record(b"x", direction=0, flags=3), CLOCK)
    assert isinstance(event, TlsData)
    assert event.direction is Direction.RECV and event.truncated
    assert str(event.src) == "10.1.2.3:443"


def test_unknown_family_gives_no_endpoint() -> None:
    event = decode_record(data_record(b"x", family=0), CLOCK)
    assert isinstance(event, TlsData)
    assert event.local is None and event.src is None


def test_ipv6_and_mapped_ipv4() -> None:
    from ecapture.events import decode_endpoint

    v6 = decode_endpoint(socket.AF_INET6, 443, socket.inet_pton(socket.AF_INET6, "::1"))
    assert str(v6) == "[::1]:443"
    mapped = socket.inet_pton(socket.AF_INET6, "::ffff:127.0.0.1")
    assert str(decode_endpoint(socket.AF_INET6, 80, mapped)) == "127.0.0.1:80"


def test_close_record() -> None:
    raw = header(RecordKind.CONN_CLOSE) + close_fields(9, 2, 300)
    event = decode_record(raw, CLOCK)
    assert isinstance(event, ConnClose)
    assert (event.fd, event.lost_records, event.lost_bytes) == (9, 2, 300)
    assert event.tid == 43
    assert (event.conn_id, event.ssl, event.socket_cookie) == (17, SSL, COOKIE)
    assert event.cause is CloseCause.TCP and not event.deferred


@pytest.mark.parametrize(("code", "cause"), [
    (1, CloseCause.TCP), (2, CloseCause.SSL_MOVED), (3, CloseCause.SSL_FREE),
    (4, CloseCause.SSL_CLEAR), (99, CloseCause.UNKNOWN),
])
def test_close_causes(code: int, cause: CloseCause) -> None:
    event = decode_record(header(RecordKind.CONN_CLOSE) + close_fields(cause=code), CLOCK)
    assert isinstance(event, ConnClose) and event.cause is cause


def test_deferred_close_and_unknown_cookie() -> None:
    raw = header(RecordKind.CONN_CLOSE, cookie=0) + close_fields(cause=3, flags=1)
    event = decode_record(raw, CLOCK)
    assert isinstance(event, ConnClose)
    assert event.deferred and event.socket_cookie is None


def test_read_fault_record_has_no_payload() -> None:
    fields = TLS_DATA_FIELDS.pack(
        7, 0, DATA_FLAG_READ_FAULT | DATA_FLAG_LAST_CHUNK, 99, 40000, 32768, 7232, 0, 0,
        bytes(20), bytes(20),
    )
    event = decode_record(header(RecordKind.TLS_DATA) + fields, CLOCK)  # no data[] follows
    assert isinstance(event, ReadFault)
    assert (event.conn_id, event.fd, event.direction, event.call_len, event.offset,
            event.bytes) == (17, 7, Direction.RECV, 40000, 32768, 7232)
    assert (event.pid, event.tid, event.comm, event.ssl) == (42, 43, "curl", SSL)


def test_close_seen_outside_the_process_has_no_thread() -> None:
    raw = header(RecordKind.CONN_CLOSE, tid=0) + close_fields()
    event = decode_record(raw, CLOCK)
    assert isinstance(event, ConnClose) and event.tid is None and event.pid == 42


def test_comm_with_invalid_utf8_is_replaced() -> None:
    raw = header(RecordKind.CONN_CLOSE, comm=b"a\xffb\0junk") + close_fields(1)
    event = decode_record(raw, CLOCK)
    assert event.comm == "a\ufffdb"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x01\x00", "shorter than its 64-byte header"),
        (header(RecordKind.TLS_DATA) + b"\0" * 10, "tls_data_event of 74 bytes"),
        (data_record(b"abc", data_len=10), "claims 10 payload bytes but carries 3"),
        (header(RecordKind.CONN_CLOSE), "conn_close_event of 64 bytes"),
        (header(77), "unknown record kind 77"),
    ],
)
def test_malformed_records_raise_decode_error(raw: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode_record(raw, CLOCK)


def test_clock_offset_default_is_epoch() -> None:
    import time

    clock = Clock()
    assert abs(clock.to_epoch(time.monotonic_ns()) - time.time_ns()) < 1_000_000_000
    assert struct.calcsize("<Q") == 8
