"""Typed records decoded from the kernel structs of bpf/events.h.

One decoder per struct; `tests/unit/test_events_layout.py` checks every
format below against the BTF of the built BPF objects. Records are frozen
msgspec Structs rather than frozen dataclasses: this runs once per captured
chunk, and a frozen dataclass of 18 fields took ~3 us to build where a
Struct takes ~0.3 us (the whole decode went from 11.8 us to ~1 us).
"""

from __future__ import annotations

import enum
import ipaddress
import socket
import struct
import time
from functools import lru_cache

import msgspec

from ecapture.errors import DecodeError

# struct record_header: kind, pid, tid, uid, timestamp_ns, conn_id, ssl,
# socket_cookie, comm[16]
RECORD_HEADER = struct.Struct("<4IQQQQ16s")
# struct tls_data_event after its header, up to data[]:
# fd, direction, flags, _pad0, call_id, call_len, offset, data_len,
# lost_records, lost_bytes, local{family, port, addr}, remote{...}
TLS_DATA_FIELDS = struct.Struct("<iBBxxQQQIIQ20s20s")
SOCK_ADDR = struct.Struct("<HH16s")  # struct sock_addr: family, port, addr
TLS_DATA_HEADER_SIZE = RECORD_HEADER.size + TLS_DATA_FIELDS.size
# struct conn_close_event after its header: fd, lost_records, lost_bytes,
# cause, flags, _pad0, _pad1
CONN_CLOSE_FIELDS = struct.Struct("<iIQBBxxxxxx")
CONN_CLOSE_SIZE = RECORD_HEADER.size + CONN_CLOSE_FIELDS.size
KIND = struct.Struct("<I")

MAX_CHUNK_SIZE = 16384  # bpf/events.h MAX_CHUNK_SIZE


class RecordKind(enum.IntEnum):
    TLS_DATA = 1
    CONN_CLOSE = 2


class Direction(enum.IntEnum):
    """Direction of a payload as seen by the traced process."""

    RECV = 0
    SEND = 1

    @property
    def label(self) -> str:
        return "send" if self is Direction.SEND else "recv"


DATA_FLAG_LAST_CHUNK = 1 << 0
DATA_FLAG_TRUNCATED = 1 << 1
DATA_FLAG_READ_FAULT = 1 << 2  # no data[]: data_len bytes could not be read
CLOSE_FLAG_DEFERRED = 1 << 0


class CloseCause(enum.StrEnum):
    """Why a connection ended (bpf/events.h enum close_cause)."""

    TCP = "tcp"  # our side sent FIN, or the connection was reset
    SSL_MOVED = "ssl_moved"  # its SSL* was next seen on another socket
    SSL_FREE = "ssl_free"
    SSL_CLEAR = "ssl_clear"  # the SSL* was made ready for a new connection
    UNKNOWN = "unknown"  # a cause this version does not know (a newer object)


_CLOSE_CAUSES = {1: CloseCause.TCP, 2: CloseCause.SSL_MOVED, 3: CloseCause.SSL_FREE,
                 4: CloseCause.SSL_CLEAR}


class Endpoint(msgspec.Struct, frozen=True, gc=False):
    """One end of a connection."""

    ip: str
    port: int

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


def decode_endpoint(family: int, port: int, raw: bytes) -> Endpoint | None:
    """struct sock_addr -> Endpoint; None when the kernel did not know it."""
    if family == socket.AF_INET:
        return Endpoint(socket.inet_ntoa(raw[:4]), port)
    if family == socket.AF_INET6:
        address = ipaddress.IPv6Address(raw)
        mapped = address.ipv4_mapped
        return Endpoint(str(mapped if mapped is not None else address), port)
    return None


class TlsData(msgspec.Struct, frozen=True, gc=False):
    """One chunk of plaintext that an SSL read or write call moved.

    A call larger than MAX_CHUNK_SIZE arrives as consecutive chunks sharing
    `call_id`, with increasing `offset`; the last one has `last_chunk` set.
    """

    timestamp_ns: int  # ns since the epoch
    pid: int
    tid: int
    uid: int
    comm: str
    conn_id: int  # the connection: unique for the capture (0: the kernel had no slot)
    fd: int  # -1 when unknown
    direction: Direction
    call_id: int
    call_len: int  # bytes the call returned, the whole call
    offset: int  # offset of `data` within the call
    data: bytes
    last_chunk: bool
    truncated: bool  # the call returned more than the kernel copied
    local: Endpoint | None
    remote: Endpoint | None
    lost_records: int  # records of this connection lost just before this one
    lost_bytes: int
    ssl: int = 0  # the SSL* in the process (addresses are reused: not an id)
    socket_cookie: int | None = None  # the socket's cookie (SO_COOKIE), None unknown

    @property
    def src(self) -> Endpoint | None:
        return self.local if self.direction is Direction.SEND else self.remote

    @property
    def dst(self) -> Endpoint | None:
        return self.remote if self.direction is Direction.SEND else self.local


class ConnClose(msgspec.Struct, frozen=True, gc=False):
    """The connection ended, once per conn_id: its socket was closed (FIN sent)
    or reset (often seen in softirq context, so the thread is not known), or
    its SSL* was freed, cleared or moved to another socket."""

    timestamp_ns: int
    pid: int
    tid: int | None
    uid: int
    comm: str
    conn_id: int
    fd: int
    lost_records: int
    lost_bytes: int
    ssl: int = 0
    socket_cookie: int | None = None
    cause: CloseCause = CloseCause.TCP
    # The main ring was full: it came later, through the spare ring, and may
    # follow records of other connections it preceded.
    deferred: bool = False


class ReadFault(msgspec.Struct, frozen=True, gc=False):
    """bpf_probe_read_user could not read a chunk of a call (its pages were not
    resident): `bytes` of the connection's stream are missing here (0 when not
    even the call's length could be read)."""

    timestamp_ns: int
    pid: int
    tid: int
    uid: int
    comm: str
    conn_id: int
    fd: int
    direction: Direction
    call_id: int
    call_len: int
    offset: int
    bytes: int
    ssl: int = 0
    socket_cookie: int | None = None


class LossReason(enum.StrEnum):
    RING_FULL = "ring_full"  # the kernel could not reserve ring space
    KERNEL_LIMIT = "kernel_limit"  # a call was larger than the per-call copy limit
    TSIZE = "tsize"  # cut for display by -t/--tsize
    QUEUE_FULL = "queue_full"  # a user-space queue was full
    PARSER = "parser"  # a parser gave up on a stream (bounded buffer)
    DECODE = "decode"  # a record did not match its struct (a bug: reported)
    IN_FLIGHT = "in_flight"  # an SSL call already running at attach: its bytes are unseen
    READ_FAULT = "read_fault"  # the kernel could not read the call's buffer
    EVICTED = "evicted"  # the processor dropped a connection's state (its LRU bound)
    STOPPED = "stopped"  # still in the ring when the stop's drain ended (timeout, 2nd signal)
    UNDELIVERED = "undelivered"  # read, but the events sink had failed (peer gone, disk full)


class Lost(msgspec.Struct, frozen=True, gc=False):
    """Records or bytes that did not reach the output, and where.

    `conn_id`/`pid` are set when the loss is known for one connection; a
    loss counted only globally (kernel per-CPU counters) has them None.
    """

    timestamp_ns: int
    reason: LossReason
    records: int
    bytes: int
    pid: int | None = None
    comm: str | None = None
    conn_id: int | None = None
    fd: int | None = None


Record = TlsData | ConnClose | ReadFault


class Clock:
    """Turns bpf_ktime_get_ns() (CLOCK_MONOTONIC) into ns since the epoch."""

    __slots__ = ("offset_ns",)

    def __init__(self, offset_ns: int | None = None) -> None:
        if offset_ns is None:
            offset_ns = time.time_ns() - time.monotonic_ns()
        self.offset_ns = offset_ns

    def to_epoch(self, monotonic_ns: int) -> int:
        return monotonic_ns + self.offset_ns


@lru_cache(maxsize=4096)  # a connection repeats its two endpoints on every chunk
def _endpoint(raw: bytes) -> Endpoint | None:
    return decode_endpoint(*SOCK_ADDR.unpack(raw))


@lru_cache(maxsize=4096)
def _comm(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", errors="replace")


_DIRECTIONS = (Direction.RECV, Direction.SEND)
_TLS_DATA = RecordKind.TLS_DATA.value
_CONN_CLOSE = RecordKind.CONN_CLOSE.value


def decode_record(raw: bytes | memoryview, clock: Clock) -> Record:
    """Decode one ring-buffer sample; raise DecodeError when malformed."""
    if len(raw) < RECORD_HEADER.size:
        raise DecodeError(
            f"record of {len(raw)} bytes is shorter than its {RECORD_HEADER.size}-byte header"
        )
    kind, pid, tid, uid, ts, conn_id, ssl, cookie, comm = RECORD_HEADER.unpack_from(raw)
    if kind == _TLS_DATA:
        if len(raw) < TLS_DATA_HEADER_SIZE:
            raise DecodeError(
                f"tls_data_event of {len(raw)} bytes is shorter than its "
                f"{TLS_DATA_HEADER_SIZE}-byte header"
            )
        (fd, direction, flags, call_id, call_len, offset, data_len, lost_records,
         lost_bytes, local, remote) = TLS_DATA_FIELDS.unpack_from(raw, RECORD_HEADER.size)
        if flags & DATA_FLAG_READ_FAULT:
            return ReadFault(
                ts + clock.offset_ns, pid, tid, uid, _comm(comm), conn_id, fd,
                _DIRECTIONS[direction & 1], call_id, call_len, offset, data_len, ssl,
                cookie or None,
            )
        end = TLS_DATA_HEADER_SIZE + data_len
        if data_len > MAX_CHUNK_SIZE or len(raw) < end:
            raise DecodeError(
                f"tls_data_event claims {data_len} payload bytes but carries "
                f"{len(raw) - TLS_DATA_HEADER_SIZE}"
            )
        # Positional, in field order: the fastest Struct construction.
        return TlsData(
            ts + clock.offset_ns, pid, tid, uid, _comm(comm), conn_id, fd,
            _DIRECTIONS[direction & 1], call_id, call_len, offset,
            bytes(raw[TLS_DATA_HEADER_SIZE:end]), bool(flags & DATA_FLAG_LAST_CHUNK),
            bool(flags & DATA_FLAG_TRUNCATED), _endpoint(local), _endpoint(remote),
            lost_records, lost_bytes, ssl, cookie or None,
        )
    if kind == _CONN_CLOSE:
        if len(raw) < CONN_CLOSE_SIZE:
            raise DecodeError(
                f"conn_close_event of {len(raw)} bytes is shorter than {CONN_CLOSE_SIZE}"
            )
        fd, lost_records, lost_bytes, cause, flags = CONN_CLOSE_FIELDS.unpack_from(
            raw, RECORD_HEADER.size)
        return ConnClose(
            timestamp_ns=clock.to_epoch(ts), pid=pid, tid=tid or None, uid=uid, comm=_comm(comm),
            conn_id=conn_id, fd=fd, lost_records=lost_records, lost_bytes=lost_bytes, ssl=ssl,
            socket_cookie=cookie or None, cause=_CLOSE_CAUSES.get(cause, CloseCause.UNKNOWN),
            deferred=bool(flags & CLOSE_FLAG_DEFERRED),
        )
    raise DecodeError(f"unknown record kind {kind} ({len(raw)} bytes)")
