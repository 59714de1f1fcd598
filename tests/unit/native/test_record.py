"""The Rust record decoder (native/src/record.rs, through ecapture._native.decode_record)
against the Python reference, events.decode_record: the same record object, or a
DecodeError with the same text, on hand-made, generated, malformed and short records."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecapture import _native
from ecapture.errors import DecodeError
from ecapture.events import (
    CONN_CLOSE_FIELDS,
    DATA_FLAG_LAST_CHUNK,
    DATA_FLAG_READ_FAULT,
    DATA_FLAG_TRUNCATED,
    MAX_CHUNK_SIZE,
    RECORD_HEADER,
    SOCK_ADDR,
    TLS_DATA_FIELDS,
    TLS_DATA_HEADER_SIZE,
    Clock,
    ConnClose,
    ReadFault,
    TlsData,
    decode_record,
)

U64 = (1 << 64) - 1


def both(raw: bytes, offset: int) -> object:
    """What each decoder makes of `raw`: equal record objects, or equal error texts."""
    try:
        expected: object = decode_record(raw, Clock(offset))
    except DecodeError as error:
        expected = ("DecodeError", str(error))
    try:
        got: object = _native.decode_record(raw, offset)
    except DecodeError as error:
        got = ("DecodeError", str(error))
    assert type(got) is type(expected)
    assert got == expected
    return got


def header(kind: int, *, pid: int = 42, tid: int = 43, uid: int = 1000, ts: int = 5_000,
           conn_id: int = 17, ssl: int = 0x55AA00112233, cookie: int = 1234,
           comm: bytes = b"curl") -> bytes:
    return RECORD_HEADER.pack(kind, pid, tid, uid, ts, conn_id, ssl, cookie, comm)


def sock_addr(ip: str | None, port: int = 443) -> bytes:
    if ip is None:
        return SOCK_ADDR.pack(0, 0, bytes(16))
    address = ipaddress.ip_address(ip)
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    return SOCK_ADDR.pack(family, port, address.packed.ljust(16, b"\0"))


def tls_data(payload: bytes, *, flags: int = DATA_FLAG_LAST_CHUNK, direction: int = 1,
             fd: int = 5, data_len: int | None = None, local: bytes | None = None,
             remote: bytes | None = None, **fields: int) -> bytes:
    return header(1, **fields) + TLS_DATA_FIELDS.pack(
        fd, direction, flags, 7, len(payload), 0,
        len(payload) if data_len is None else data_len, 2, 300,
        local if local is not None else sock_addr("127.0.0.1", 50000),
        remote if remote is not None else sock_addr("127.0.0.1", 443),
    ) + payload


def conn_close(*, cause: int = 1, flags: int = 0, **fields: int) -> bytes:
    return header(2, **fields) + CONN_CLOSE_FIELDS.pack(9, 3, 400, cause, flags)


def test_hand_made_records_of_each_kind() -> None:
    assert isinstance(both(tls_data(b"GET / HTTP/1.1\r\n\r\n"), 1_000), TlsData)
    assert isinstance(both(tls_data(b"", flags=DATA_FLAG_READ_FAULT, data_len=70_000), 5),
                      ReadFault)
    assert isinstance(both(tls_data(b"x" * MAX_CHUNK_SIZE, flags=DATA_FLAG_TRUNCATED), 0),
                      TlsData)
    for cause in range(6):
        assert isinstance(both(conn_close(cause=cause, flags=1, tid=0, cookie=0), 1), ConnClose)
    both(tls_data(b"abc", cookie=0, direction=0xFE), -5_000)  # cookie None, direction & 1
    both(tls_data(b"abc") + b"trailing bytes are not payload", 0)


@pytest.mark.parametrize("comm", [
    b"", b"nginx", b"0123456789abcdef", b"a\0b", b"\xff", b"ab\xffc", b"\xe2\x82",
    b"\xe2\x82\xac", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf0\x9f\x98", b"\xf4\x90\x80\x80",
    b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80", "é".encode(),
])
def test_comm_is_cut_at_nul_and_decoded_with_replacement(comm: bytes) -> None:
    both(tls_data(b"x", comm=comm), 0)
    both(conn_close(comm=comm), 0)


@pytest.mark.parametrize("ip", [
    "0.0.0.0", "10.1.2.3", "255.255.255.255", "::", "::1", "::ffff:10.1.2.3", "::ffff:0:0",
    "::10.1.2.3", "2001:db8::1", "2001:db8:0:1:0:0:0:1", "2001:0:0:1:0:0:0:1",
    "1:0:2:3:4:5:6:7", "fe80::1:0:0:1", "1:2:3:4:5:6:7:8", "0:0:1::", "64:ff9b::1.2.3.4",
])
def test_endpoints_show_as_python_shows_them(ip: str) -> None:
    both(tls_data(b"x", local=sock_addr(ip, 1), remote=sock_addr(ip, 65535)), 0)


def test_an_unknown_family_is_no_endpoint() -> None:
    odd = SOCK_ADDR.pack(1, 80, b"\x01" * 16)  # AF_UNIX
    record = both(tls_data(b"x", local=odd, remote=sock_addr(None)), 0)
    assert isinstance(record, TlsData) and record.local is None and record.remote is None


@pytest.mark.parametrize("raw", [
    b"", b"\x01", bytes(63), header(1), header(1) + bytes(87), header(2),
    header(2) + bytes(23), header(3), header(0) + bytes(100), header(56) + bytes(20),
    tls_data(b"abc")[:-1], tls_data(b"abc", data_len=MAX_CHUNK_SIZE + 1),
    tls_data(b"", data_len=0xFFFF_FFFF), tls_data(b"x" * (MAX_CHUNK_SIZE + 1)),
])
def test_malformed_records_fail_with_the_same_text(raw: bytes) -> None:
    result = both(raw, 0)
    assert isinstance(result, tuple) and result[0] == "DecodeError"


u32 = st.integers(0, (1 << 32) - 1)
u64 = st.integers(0, U64)
addresses = st.one_of(
    st.none(),
    st.ip_addresses().map(str),
    st.builds(lambda tail: f"::ffff:{ipaddress.IPv4Address(tail)}", u32),
    st.lists(st.sampled_from([0, 0, 0, 1, 0xFFFF, 0x2001]), min_size=8, max_size=8).map(
        lambda groups: str(ipaddress.IPv6Address(b"".join(g.to_bytes(2, "big") for g in groups)))),
)
raw_sock_addr = st.one_of(
    st.builds(sock_addr, addresses, st.integers(0, 65535)),
    st.builds(SOCK_ADDR.pack, st.integers(0, 65535), st.integers(0, 65535), st.binary(min_size=16,
                                                                                     max_size=16)),
)
headers = st.fixed_dictionaries({
    "pid": u32, "tid": u32, "uid": u32, "ts": st.integers(0, 1 << 62), "conn_id": u64,
    "ssl": u64, "cookie": st.sampled_from([0, 1, U64]) | u64,
    "comm": st.binary(max_size=16),
})
offsets = st.integers(-(1 << 40), 1 << 62)


@st.composite
def records(draw: st.DrawFn) -> bytes:
    fields = draw(headers)
    kind = draw(st.sampled_from([1, 1, 1, 2, 2, 0, 3, 56]) | u32)
    if kind == 2:
        body = CONN_CLOSE_FIELDS.pack(
            draw(st.integers(-(1 << 31), (1 << 31) - 1)), draw(u32), draw(u64),
            draw(st.integers(0, 255)), draw(st.integers(0, 255)))
        raw = header(2, **fields) + body
    else:
        payload = draw(st.binary(max_size=300))
        data_len = draw(st.sampled_from([len(payload)] * 4 + [0, len(payload) + 1,
                                                              MAX_CHUNK_SIZE + 1]) | u32)
        raw = header(kind, **fields) + TLS_DATA_FIELDS.pack(
            draw(st.integers(-(1 << 31), (1 << 31) - 1)), draw(st.integers(0, 255)),
            draw(st.integers(0, 255)), draw(u64), draw(u64), draw(u64), data_len, draw(u32),
            draw(u64), draw(raw_sock_addr), draw(raw_sock_addr)) + payload
    cut = draw(st.sampled_from([None] * 6 + [0, 10, 63, 64, 87, 88, 151, 152]))
    return raw if cut is None else raw[:cut]


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records(), offsets)
def test_generated_records_decode_the_same(raw: bytes, offset: int) -> None:
    ts = int.from_bytes(raw[16:24], "little") if len(raw) >= 24 else 0
    if 0 <= ts + offset <= U64:  # Rust saturates where Python's integers would leave u64
        both(raw, offset)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=400), st.sampled_from([b"", b"\x01\0\0\0", b"\x02\0\0\0"]))
def test_arbitrary_bytes_decode_the_same(tail: bytes, kind: bytes) -> None:
    both(kind + tail, 0)


def test_a_large_record_keeps_its_payload_exact() -> None:
    payload = bytes(range(256)) * (MAX_CHUNK_SIZE // 256)
    record = both(tls_data(payload, ts=1 << 61), 1_700_000_000_000_000_000)
    assert isinstance(record, TlsData) and record.data == payload
    assert len(tls_data(payload)) == TLS_DATA_HEADER_SIZE + MAX_CHUNK_SIZE
