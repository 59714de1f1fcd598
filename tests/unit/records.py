"""Raw ring records as bpf/events.h lays them out, for tests that feed a pipeline."""

from __future__ import annotations

import socket
import struct

from ecapture.events import (
    CONN_CLOSE_FIELDS,
    DATA_FLAG_LAST_CHUNK,
    DATA_FLAG_READ_FAULT,
    RECORD_HEADER,
    TLS_DATA_FIELDS,
    RecordKind,
)

SSL = 0x5500AA00


def address(ip: str = "127.0.0.1", port: int = 443) -> bytes:
    """struct sock_addr (family, port, addr[16]); "" for an unknown one."""
    if not ip:
        return bytes(20)
    if ":" in ip:
        return struct.pack("<HH16s", socket.AF_INET6, port, socket.inet_pton(socket.AF_INET6, ip))
    return struct.pack("<HH16s", socket.AF_INET, port, socket.inet_aton(ip) + bytes(12))


ADDRESS = address()


def data(payload: bytes, *, direction: int = 1, flags: int = 1, call_len: int | None = None,
         offset: int = 0, lost: int = 0, conn_id: int = 5, ts: int = 1,
         data_len: int | None = None, pid: int = 10, comm: bytes = b"curl", fd: int = 3,
         ssl: int = SSL, local: bytes = ADDRESS, remote: bytes = ADDRESS,
         cookie: int = 77) -> bytes:
    header = RECORD_HEADER.pack(RecordKind.TLS_DATA, pid, pid + 1, 0, ts, conn_id, ssl, cookie,
                                comm)
    fields = TLS_DATA_FIELDS.pack(
        fd, direction, flags, 1, len(payload) if call_len is None else call_len, offset,
        len(payload) if data_len is None else data_len, lost, lost * 100, local, remote,
    )
    return header + fields + payload


def close(lost: int = 0, conn_id: int = 5, *, ts: int = 2, deferred: bool = False,
          cause: int = 1, pid: int = 10, comm: bytes = b"curl", fd: int = 3,
          ssl: int = SSL, tid: int | None = None) -> bytes:
    header = RECORD_HEADER.pack(RecordKind.CONN_CLOSE, pid, pid + 1 if tid is None else tid, 0,
                                ts, conn_id, ssl, 77, comm)
    return header + CONN_CLOSE_FIELDS.pack(fd, lost, lost * 100, cause, int(deferred))


def fault(missing: int, *, conn_id: int = 5, offset: int = 0, ts: int = 1,
          pid: int = 10) -> bytes:
    """A chunk the kernel could not read: no payload, data_len = bytes missing."""
    return data(b"", flags=DATA_FLAG_READ_FAULT | DATA_FLAG_LAST_CHUNK, call_len=offset + missing,
                offset=offset, conn_id=conn_id, ts=ts, data_len=missing, pid=pid)
