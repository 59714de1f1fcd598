"""Build captured events in one line, and feed them to a tracker."""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from ecapture.events import ConnClose, Direction, Endpoint, TlsData
from ecapture.processor.model import HttpExchange, ProcessorItem
from ecapture.processor.tracker import ConnectionTracker

SEND = Direction.SEND
RECV = Direction.RECV
PID = 4242
CONN_ID = 0x7F00DEAD0000
LOCAL = Endpoint("127.0.0.1", 40000)
REMOTE = Endpoint("127.0.0.1", 8443)

_call_ids = itertools.count(1)

# One recorded stream: (direction as the traced process saw it, bytes)
Chunks = Sequence[tuple[Direction, bytes]]


def tls_data(
    data: bytes,
    direction: Direction = SEND,
    *,
    timestamp_ns: int = 1_000,
    conn_id: int = CONN_ID,
    pid: int = PID,
    fd: int = 7,
    lost_records: int = 0,
    lost_bytes: int = 0,
    truncated: bool = False,
    ssl: int = 0,
) -> TlsData:
    return TlsData(
        timestamp_ns=timestamp_ns, pid=pid, tid=pid, uid=1000, comm="curl", conn_id=conn_id,
        fd=fd, direction=direction, call_id=next(_call_ids), call_len=len(data), offset=0,
        data=data, last_chunk=True, truncated=truncated, local=LOCAL, remote=REMOTE,
        lost_records=lost_records, lost_bytes=lost_bytes, ssl=ssl,
    )


def conn_close(*, timestamp_ns: int = 10**9, conn_id: int = CONN_ID, pid: int = PID) -> ConnClose:
    return ConnClose(
        timestamp_ns=timestamp_ns, pid=pid, tid=pid, uid=1000, comm="curl", conn_id=conn_id,
        fd=7, lost_records=0, lost_bytes=0,
    )


def split(chunks: Chunks, size: int | None) -> list[tuple[Direction, bytes]]:
    """Re-cut each direction's run of bytes into pieces of `size` (None: as recorded)."""
    if size is None:
        return list(chunks)
    pieces = []
    for direction, data in chunks:
        pieces.extend((direction, data[i : i + size]) for i in range(0, len(data), size))
    return pieces


def events(chunks: Iterable[tuple[Direction, bytes]], *, conn_id: int = CONN_ID,
           start_ns: int = 1_000) -> list[TlsData]:
    return [
        tls_data(data, direction, timestamp_ns=start_ns + index, conn_id=conn_id)
        for index, (direction, data) in enumerate(chunks)
    ]


def run(
    chunks: Chunks,
    size: int | None = None,
    *,
    close: bool = True,
    tracker: ConnectionTracker | None = None,
) -> list[ProcessorItem]:
    """Feed a recorded stream (re-cut by `size`) and close the connection."""
    tracker = tracker if tracker is not None else ConnectionTracker()
    out: list[ProcessorItem] = []
    for event in events(split(chunks, size)):
        out.extend(tracker.feed(event))
    if close:
        out.extend(tracker.close(conn_close()))
    else:
        out.extend(tracker.flush())
    return out


DATA = Path(__file__).resolve().parents[2] / "data" / "processor"


def recording(name: str) -> list[tuple[Direction, bytes]]:
    """A stream saved by tests/data/processor/record_streams.py (client's view)."""
    document = json.loads((DATA / f"{name}.json").read_text())
    return [
        (SEND if direction == "send" else RECV, base64.b64decode(payload))
        for direction, payload in document["chunks"]
    ]


def flipped(chunks: Chunks) -> list[tuple[Direction, bytes]]:
    """The same stream as the server process would see it."""
    return [(RECV if direction is SEND else SEND, data) for direction, data in chunks]


def exchanges(items: Iterable[ProcessorItem]) -> list[HttpExchange]:
    return [item for item in items if isinstance(item, HttpExchange)]
