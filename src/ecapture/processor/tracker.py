"""Connections by (pid, conn_id): which protocol, which side, which parser.

The tracker runs for every captured event, so the common paths are short: a
connection known not to be HTTP costs one dict lookup and one Unparsed item.
Memory is bounded by `max_connections` (least recently used evicted, its
exchanges flushed, a `lost` item with reason "evicted" said),
`max_body_bytes` per body and small sniffing buffers. Time alone never ends
a connection: a quiet HTTP/2 connection keeps its HPACK tables for as long
as it lives (a gRPC channel or a long poll may be silent for minutes).

conn_id is unique for the capture (bpf/tls.bpf.c allocates it); the kernel
ends a connection with a close record. Should that close never come, a new
conn_id for the same (pid, SSL*) still means the old connection is over.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

from ecapture.events import ConnClose, Direction, LossReason, Lost, ReadFault, TlsData
from ecapture.processor.base import ConnectionParser
from ecapture.processor.model import ConnectionInfo, ProcessorItem, Unparsed
from ecapture.processor.sniff import (
    ANY_START,
    MAX_START_LINE,
    START_MARKER,
    START_TAIL,
    Sniff,
    Start,
    sniff_start,
)

# Sniffing waits for at most this much before deciding (a start line is short).
MAX_SNIFF_BYTES = 16 << 10
MAX_SNIFF_EVENTS = 1024  # byte-sized events while a first line trickles in
# A connection joined mid-way is scanned for a start line this long, then
# taken for not HTTP.
MAX_SCAN_BYTES = 1 << 20


class _Connection:
    __slots__ = (
        "client_direction", "event", "faulted", "last_ns", "parser", "pending", "reason",
        "scanned", "sniffed", "tails",
    )

    def __init__(self, event: TlsData) -> None:
        self.event = event  # the first one: who owns the connection
        self.last_ns = event.timestamp_ns
        self.parser: ConnectionParser | None = None
        self.client_direction = Direction.SEND
        # set once the connection is known not to be parsed: the fast path
        self.reason: str | None = None
        self.pending: list[TlsData] = []  # held while sniffing
        self.sniffed = [bytearray(), bytearray()]  # first bytes by Direction
        self.tails: list[bytearray] | None = None  # partial lines by Direction, when scanning
        self.scanned = 0
        self.faulted = False  # a read fault left a gap before the next event


def _connection_info(event: TlsData, client_direction: Direction) -> ConnectionInfo:
    if client_direction is Direction.SEND:
        client, server = event.local, event.remote
    else:
        client, server = event.remote, event.local
    return ConnectionInfo(
        pid=event.pid, comm=event.comm, uid=event.uid, fd=event.fd, conn_id=event.conn_id,
        client=client, server=server,
    )


class TrackerLimits(NamedTuple):
    """What bounds a tracker: the native core (native/src/tracker.rs) takes the same."""

    max_connections: int
    max_body_bytes: int
    parse_http: bool


class ConnectionTracker:
    """Routes captured TLS plaintext to per-connection HTTP parsers."""

    def __init__(
        self,
        *,
        max_connections: int = 16384,
        max_body_bytes: int = 8 << 20,
        parse_http: bool = True,
    ) -> None:
        self._max_connections = max(1, max_connections)
        self._max_body_bytes = max_body_bytes
        self._parse_http = parse_http
        # least recently used first
        self._connections: OrderedDict[tuple[int, int], _Connection] = OrderedDict()
        # (pid, SSL*) -> the conn_id open on it, for the safety net in feed()
        self._by_ssl: dict[tuple[int, int], int] = {}
        # keys of connections not seen yet whose first chunk faulted (bounded)
        self._faulted: OrderedDict[tuple[int, int], None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._connections)

    @property
    def limits(self) -> TrackerLimits:
        return TrackerLimits(self._max_connections, self._max_body_bytes, self._parse_http)

    def feed(self, event: TlsData) -> list[ProcessorItem]:
        """One captured chunk, in capture order."""
        key = (event.pid, event.conn_id)
        connection = self._connections.get(key)
        if connection is not None:
            self._connections.move_to_end(key)
            connection.last_ns = event.timestamp_ns
            reason = connection.reason
            if reason is not None:
                return [Unparsed(event, reason)]
            gap = event.lost_records
            if connection.faulted:  # a read fault before this event
                connection.faulted = False
                gap = 1
            parser = connection.parser
            if parser is not None:
                out: list[ProcessorItem] = []
                info = parser.info
                if info.fd < 0 or info.client is None:
                    self._learn_endpoints(connection, parser, event)
                if gap:
                    parser.gap(event, out)
                parser.feed(event, event.direction is connection.client_direction, out)
                return out
            out = []
            if gap and connection.tails is None:
                self._lost_while_sniffing(connection, out)
        else:
            out = []
            self._new_ssl_user(event, out)
            connection = _Connection(event)
            self._connections[key] = connection
            if len(self._connections) > self._max_connections:
                self._evict(event.timestamp_ns, out)
            if not self._parse_http:
                connection.reason = "not-parsed"
                out.append(Unparsed(event, "not-parsed"))
                return out
            faulted = key in self._faulted
            if faulted:
                del self._faulted[key]
            if event.lost_records or faulted:
                connection.tails = [bytearray(), bytearray()]  # its start was lost
        if connection.parser is not None:  # a scan of held chunks started one just now
            self._feed_parser(connection, event, out)
        elif connection.tails is not None:
            self._scan(connection, event, out)
        else:
            self._sniff(connection, event, out)
        return out

    def close(self, event: ConnClose) -> list[ProcessorItem]:
        """The connection ended: flush it at once."""
        key = (event.pid, event.conn_id)
        connection = self._connections.pop(key, None)
        out: list[ProcessorItem] = []
        if self._faulted:
            self._faulted.pop(key, None)
        if connection is not None:
            self._finish(connection, event.timestamp_ns, True, out)
        return out

    def fault(self, event: ReadFault) -> None:
        """A chunk of this connection could not be read: its next event
        follows a gap (the parser resynchronises as after lost records)."""
        key = (event.pid, event.conn_id)
        connection = self._connections.get(key)
        if connection is not None:
            connection.faulted = True
            return
        faulted = self._faulted
        faulted[key] = None
        if len(faulted) > self._max_connections:
            faulted.popitem(last=False)  # bounded: an old mark may be dropped

    def flush(self) -> list[ProcessorItem]:
        """At exit: everything still in flight, marked incomplete."""
        out: list[ProcessorItem] = []
        while self._connections:
            _, connection = self._connections.popitem(last=False)
            self._finish(connection, connection.last_ns, False, out)
        return out

    # -- internals -------------------------------------------------------------

    @staticmethod
    def _learn_endpoints(
        connection: _Connection, parser: ConnectionParser, event: TlsData
    ) -> None:
        """The first event may precede the fd and addresses (they come from a
        nested syscall): take them from a later event that knows them."""
        info = parser.info
        if (info.fd < 0 <= event.fd) or (info.client is None and event.remote is not None):
            parser.info = _connection_info(event, connection.client_direction)

    def _new_ssl_user(self, event: TlsData, out: list[ProcessorItem]) -> None:
        """A new conn_id on an SSL* whose previous connection is still open
        here: that one ended (its close was lost or is late)."""
        if not event.ssl:
            return
        owner = (event.pid, event.ssl)
        previous = self._by_ssl.get(owner)
        self._by_ssl[owner] = event.conn_id
        if previous is None or previous == event.conn_id:
            return
        connection = self._connections.pop((event.pid, previous), None)
        if connection is not None:
            self._finish(connection, event.timestamp_ns, True, out)

    def _evict(self, timestamp_ns: int, out: list[ProcessorItem]) -> None:
        _, connection = self._connections.popitem(last=False)
        first = connection.event
        fd = connection.parser.info.fd if connection.parser is not None else first.fd
        # Its parser state goes: what follows on it is parsed as joined mid-way.
        out.append(Lost(
            timestamp_ns, LossReason.EVICTED, 0, 0, pid=first.pid, comm=first.comm,
            conn_id=first.conn_id, fd=fd,
        ))
        self._finish(connection, timestamp_ns, False, out)

    def _finish(
        self, connection: _Connection, timestamp_ns: int, closed: bool, out: list[ProcessorItem]
    ) -> None:
        first = connection.event
        if first.ssl:
            owner = (first.pid, first.ssl)
            if self._by_ssl.get(owner) == first.conn_id:
                del self._by_ssl[owner]
        if connection.parser is not None:
            connection.parser.finish(timestamp_ns, closed, out)
            return
        for pending in connection.pending:  # still sniffing: never decided
            out.append(Unparsed(pending, "not-http"))
        connection.pending.clear()

    def _lost_while_sniffing(self, connection: _Connection, out: list[ProcessorItem]) -> None:
        """A gap before the protocol was known: scan what was held instead."""
        pending = connection.pending
        connection.pending = []
        connection.sniffed = []
        connection.tails = [bytearray(), bytearray()]
        for held in pending:
            self._scan(connection, held, out)

    def _sniff(self, connection: _Connection, event: TlsData, out: list[ProcessorItem]) -> None:
        """Decide protocol and roles from the first bytes of each direction."""
        connection.pending.append(event)
        sniffed = connection.sniffed[event.direction]
        sniffed += event.data[: MAX_SNIFF_BYTES - len(sniffed)]
        verdict = sniff_start(sniffed)
        if verdict is Sniff.NEED_MORE and (
            len(connection.pending) < MAX_SNIFF_EVENTS
            and sum(len(buffer) for buffer in connection.sniffed) < MAX_SNIFF_BYTES
        ):
            return
        pending = connection.pending
        connection.pending = []
        connection.sniffed = []
        if not isinstance(verdict, Start):
            # not a message start: joined mid-way, or not HTTP at all
            connection.tails = [bytearray(), bytearray()]
            for held in pending:
                self._scan(connection, held, out)
            return
        client = event.direction
        if verdict is Start.RESPONSE:
            client = Direction(1 - event.direction)
        self._start_parser(connection, verdict, client, None)
        for held in pending:
            self._feed_parser(connection, held, out)

    def _scan(self, connection: _Connection, event: TlsData, out: list[ProcessorItem]) -> None:
        """Joined mid-way: look for an HTTP/1 start line in either direction."""
        tails = connection.tails
        if tails is None or connection.parser is not None:
            self._feed_parser(connection, event, out)
            return
        tail = tails[event.direction]
        carried = bytes(tail)
        tail += event.data
        match = ANY_START.search(tail) if START_MARKER in tail else None
        if match is None:
            connection.scanned += len(event.data)
            out.append(Unparsed(event, "mid-stream"))
            del tail[: tail.rfind(b"\n") + 1]
            if len(tail) > MAX_START_LINE:
                del tail[:-START_TAIL]  # no line end for long: keep what a start may begin with
            if connection.scanned > MAX_SCAN_BYTES:
                connection.reason = "not-http"
                connection.tails = None
            return
        start = Start.REQUEST if match.group("request") is not None else Start.RESPONSE
        client = event.direction if start is Start.REQUEST else Direction(1 - event.direction)
        self._start_parser(connection, start, client, "mid-stream")
        connection.tails = None
        parser = connection.parser
        from ecapture.processor.http1 import Http1Parser  # loaded by _start_parser

        if isinstance(parser, Http1Parser):
            parser.prime(event.direction is client, carried)
        self._feed_parser(connection, event, out)

    def _start_parser(
        self, connection: _Connection, start: Start, client: Direction, resync: str | None
    ) -> None:
        connection.client_direction = client
        info = _connection_info(connection.event, client)
        # The parsers (httptools, hyperframe, hpack) are loaded with the first
        # HTTP connection: a tracker that never meets one, or one whose limits
        # only configure the native core, does not load them.
        if start is Start.HTTP2:
            from ecapture.processor.http2 import Http2Parser

            connection.parser = Http2Parser(info, max_body_bytes=self._max_body_bytes)
        else:
            from ecapture.processor.http1 import Http1Parser

            connection.parser = Http1Parser(
                info, max_body_bytes=self._max_body_bytes, resync_reason=resync
            )

    def _feed_parser(
        self, connection: _Connection, event: TlsData, out: list[ProcessorItem]
    ) -> None:
        parser = connection.parser
        if parser is None:
            out.append(Unparsed(event, connection.reason or "not-http"))
            return
        info = parser.info
        if info.fd < 0 or info.client is None:
            self._learn_endpoints(connection, parser, event)
        parser.feed(event, event.direction is connection.client_direction, out)
