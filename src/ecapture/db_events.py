"""Records of the database objects (bpf/mysqld.bpf.c, bpf/postgres.bpf.c) and their decoders.

The structs are the database block of bpf/events.h; tests/unit/db/test_db_layout.py
checks the formats below against the BTF of both built objects.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Mapping

import msgspec

from ecapture.errors import DecodeError
from ecapture.events import Clock

# struct db_header: kind, pid, tid, uid, timestamp_ns, comm[16]
DB_HEADER = struct.Struct("<4IQ16s")
# struct db_query_chunk after its header, up to data[]:
# query_id, conn, offset, data_len, total_len, command, flags, _pad0
CHUNK_FIELDS = struct.Struct("<QQIIIBBxx")
CHUNK_HEADER_SIZE = DB_HEADER.size + CHUNK_FIELDS.size
# struct db_query_end after its header, up to message[]:
# conn, status, error_code, stmt_id, command, _pad0, message_len, sqlstate[8]
END_FIELDS = struct.Struct("<QIIIBxH8s")
END_HEADER_SIZE = DB_HEADER.size + END_FIELDS.size

DB_CHUNK_SIZE = 16384  # bpf/events.h DB_CHUNK_SIZE
DB_MAX_CHUNKS = 64  # bpf/events.h DB_MAX_CHUNKS
DB_MAX_TEXT = DB_CHUNK_SIZE * DB_MAX_CHUNKS  # at most this much of a text is copied
DB_MESSAGE_SIZE = 256

CHUNK_LAST = 1 << 0
CHUNK_TRUNCATED = 1 << 1
CHUNK_READ_FAULT = 1 << 2


class DbRecordKind(enum.IntEnum):
    QUERY_CHUNK = 32
    QUERY_END = 33


class DbStatus(enum.IntEnum):
    """bpf/events.h enum db_status."""

    OK = 1
    ERROR = 2
    IDLE = 3  # postgres: the backend went idle; an error came as a record of its own
    RUN = 4  # postgres: PortalRun began executing the query (one per execution)


class DbStat(enum.IntEnum):
    """Indexes of the database objects' per-CPU `stats` map (enum db_stat_index)."""

    RECORDS = 0
    RING_FULL_RECORDS = 1
    RING_FULL_BYTES = 2
    TRUNCATED = 3
    READ_FAULTS = 4


class QueryChunk(msgspec.Struct, frozen=True, gc=False):
    """A piece of a query's text, at `offset`."""

    timestamp_ns: int  # ns since the epoch
    pid: int
    tid: int
    uid: int
    comm: str
    query_id: int  # the kernel's start time of the query: the same for every chunk
    conn: int  # mysqld: the THD* of the connection; postgres: 0
    offset: int
    data: bytes
    total_len: int  # 0: not known (a NUL-terminated text)
    command: int  # mysqld: enum_server_command
    last: bool
    truncated: bool  # the text went on past what the kernel copies
    read_fault: bool  # the text could not be read from `offset` on


class QueryEnd(msgspec.Struct, frozen=True, gc=False):
    """The server is done with the query running on this thread (or backend)."""

    timestamp_ns: int
    pid: int
    tid: int
    uid: int
    comm: str
    conn: int
    status: DbStatus
    error_code: int
    stmt_id: int  # mysqld: the id the server gave a prepared statement
    command: int
    sqlstate: str
    message: bytes


Decoder = Callable[[bytes, Clock], object]


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", errors="replace")


def _header(raw: bytes, size: int, what: str) -> tuple[int, int, int, int, int, bytes]:
    if len(raw) < size:
        raise DecodeError(f"{what} of {len(raw)} bytes is shorter than its {size}-byte header")
    kind, pid, tid, uid, ts, comm = DB_HEADER.unpack_from(raw)
    return kind, pid, tid, uid, ts, comm


def decode_chunk(raw: bytes, clock: Clock) -> QueryChunk:
    _kind, pid, tid, uid, ts, comm = _header(raw, CHUNK_HEADER_SIZE, "db_query_chunk")
    query_id, conn, offset, data_len, total_len, command, flags = CHUNK_FIELDS.unpack_from(
        raw, DB_HEADER.size)
    end = CHUNK_HEADER_SIZE + data_len
    if data_len > DB_CHUNK_SIZE or len(raw) < end:
        raise DecodeError(f"db_query_chunk claims {data_len} bytes but carries "
                          f"{len(raw) - CHUNK_HEADER_SIZE}")
    return QueryChunk(
        clock.to_epoch(ts), pid, tid, uid, _text(comm), query_id, conn, offset,
        bytes(raw[CHUNK_HEADER_SIZE:end]), total_len, command, bool(flags & CHUNK_LAST),
        bool(flags & CHUNK_TRUNCATED), bool(flags & CHUNK_READ_FAULT),
    )


def decode_end(raw: bytes, clock: Clock) -> QueryEnd:
    _kind, pid, tid, uid, ts, comm = _header(raw, END_HEADER_SIZE, "db_query_end")
    conn, status, error_code, stmt_id, command, message_len, sqlstate = END_FIELDS.unpack_from(
        raw, DB_HEADER.size)
    end = END_HEADER_SIZE + message_len
    if message_len >= DB_MESSAGE_SIZE or len(raw) < end:
        raise DecodeError(f"db_query_end claims {message_len} message bytes but carries "
                          f"{len(raw) - END_HEADER_SIZE}")
    try:
        known = DbStatus(status)
    except ValueError:
        raise DecodeError(f"db_query_end with unknown status {status}") from None
    return QueryEnd(
        clock.to_epoch(ts), pid, tid, uid, _text(comm), conn, known, error_code, stmt_id,
        command, _text(sqlstate), bytes(raw[END_HEADER_SIZE:end]),
    )


DECODERS: Mapping[int, Decoder] = {
    DbRecordKind.QUERY_CHUNK: decode_chunk,
    DbRecordKind.QUERY_END: decode_end,
}


def encode_chunk(chunk: QueryChunk, clock: Clock) -> bytes:
    """The raw record the kernel would submit for `chunk` (tests and replays)."""
    flags = ((CHUNK_LAST if chunk.last else 0) | (CHUNK_TRUNCATED if chunk.truncated else 0)
             | (CHUNK_READ_FAULT if chunk.read_fault else 0))
    return (
        DB_HEADER.pack(DbRecordKind.QUERY_CHUNK, chunk.pid, chunk.tid, chunk.uid,
                       chunk.timestamp_ns - clock.offset_ns, chunk.comm.encode())
        + CHUNK_FIELDS.pack(chunk.query_id, chunk.conn, chunk.offset, len(chunk.data),
                            chunk.total_len, chunk.command, flags) + chunk.data
    )


def encode_end(end: QueryEnd, clock: Clock) -> bytes:
    return (
        DB_HEADER.pack(DbRecordKind.QUERY_END, end.pid, end.tid, end.uid,
                       end.timestamp_ns - clock.offset_ns, end.comm.encode())
        + END_FIELDS.pack(end.conn, end.status, end.error_code, end.stmt_id, end.command,
                          len(end.message), end.sqlstate.encode()) + end.message
    )
