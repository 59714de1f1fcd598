"""What every per-connection parser shares: its interface and bounded bodies."""

from __future__ import annotations

from typing import Protocol

from ecapture.events import LossReason, Lost, TlsData
from ecapture.processor.model import ConnectionInfo, ProcessorItem


class ConnectionParser(Protocol):
    """Sans-IO parser of one connection, both directions, in capture order.

    Parsers append what they produce to `out` (one list per tracker call, so
    the hot path allocates no list per layer) and never raise on bad bytes.
    """

    info: ConnectionInfo

    def feed(self, event: TlsData, from_client: bool, out: list[ProcessorItem]) -> None:
        """Parse one chunk; `from_client` tells the direction by role."""

    def gap(self, event: TlsData, out: list[ProcessorItem]) -> None:
        """Records of this connection were lost just before `event`."""

    def finish(self, timestamp_ns: int, closed: bool, out: list[ProcessorItem]) -> None:
        """Emit everything in flight; `closed` means the socket was closed,
        which ends read-until-close bodies (RFC 9112 §6.3 item 8)."""


class BodyBuffer:
    """A message body kept up to `limit` bytes; the rest is only counted."""

    __slots__ = ("data", "dropped", "limit")

    def __init__(self, limit: int) -> None:
        self.data = bytearray()
        self.limit = limit
        self.dropped = 0

    def add(self, chunk: bytes | bytearray | memoryview) -> None:
        room = self.limit - len(self.data)
        size = len(chunk)
        if size <= room:
            self.data += chunk
            return
        if room > 0:
            self.data += chunk[:room]
            size -= room
        self.dropped += size

    def __len__(self) -> int:
        return len(self.data)


def body_lost(info: ConnectionInfo, timestamp_ns: int, dropped: int) -> Lost:
    """The Lost item for bytes a parser did not keep (a body past its
    limit) or could not frame (skipped until the next message start)."""
    return Lost(
        timestamp_ns=timestamp_ns, reason=LossReason.PARSER, records=0, bytes=dropped,
        pid=info.pid, comm=info.comm, conn_id=info.conn_id, fd=info.fd,
    )
