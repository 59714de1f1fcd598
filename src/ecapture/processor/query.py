"""The query assembler: chunk and end records in, one `Query` per statement out.

Sans-IO, per server thread. The kernel sends a query's text in chunks (one
query id, increasing offsets), then one end record when the server is done:

- mysqld: every dispatch is one query on its thread: the end record carries
  ok/error (the server's error packet), and for a COM_STMT_PREPARE the id the
  client was told. A COM_STMT_EXECUTE's text is its statement id (4 bytes,
  little-endian); it is shown with the text prepared under that id on the same
  connection (the THD*); id 0xffffffff is MariaDB's "the last one prepared".
- postgres: a backend reports its query's text at Parse, Bind and Execute
  (the extended protocol) or once (the simple one), and goes idle at
  ReadyForQuery; PortalRun says an execution began. So a text starts a
  query, the same text again continues it (Bind, Execute) until the query
  ran, another text or the same one after a run ends it (ok: an error would
  have skipped to Sync) and starts the next (a pipeline), an error record
  marks it failed, and the idle record ends it. A text that never ran before
  the idle record was only parsed: command "prepare" (a client preparing a
  statement, e.g. psycopg after prepare_threshold executions).
A text the kernel cut is flagged `truncated` and counted as `lost`
(kernel_limit); a chunk lost in between (the ring was full) flags it too.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec

from ecapture.db_events import DbStatus, QueryChunk, QueryEnd
from ecapture.events import LossReason, Lost

# Threads with a query in progress, and prepared statements, kept at most:
# bounds what a server that never ends its queries can hold here.
MAX_THREADS = 4096
MAX_PREPARED = 16384
LAST_PREPARED = 0xFFFFFFFF  # MariaDB: COM_STMT_EXECUTE of the statement prepared last

COM_QUERY = 3
COM_STMT_PREPARE = 22
COM_STMT_EXECUTE = 23
COMMANDS = {COM_QUERY: "query", COM_STMT_PREPARE: "prepare", COM_STMT_EXECUTE: "execute"}


class Flavor(enum.Enum):
    MYSQLD = "mysqld"
    POSTGRES = "postgres"


class Query(msgspec.Struct, frozen=True, gc=False):
    """One statement a database server ran."""

    timestamp_ns: int  # when the server started it
    pid: int  # the server process
    tid: int
    uid: int
    comm: str
    database: str  # "mysqld" or "postgres"
    thread: int  # the server thread (mysqld) or backend pid (postgres) that ran it
    command: str  # "query", "prepare", "execute"
    sql: bytes
    duration_ns: int | None  # None: the capture ended first
    status: str | None  # "ok", "error", None: not known
    truncated: bool = False  # the kernel copied only the first part of the text
    text_len: int = 0  # the text's length when known (more than len(sql) when cut)
    stmt_id: int | None = None  # mysqld: the prepared statement's id
    error_code: int | None = None
    sqlstate: str | None = None
    error: bytes | None = None  # the error message the server sent
    statement_unseen: bool = False  # an execute of a statement prepared before the capture


@dataclass(slots=True)
class _Text:
    first: QueryChunk
    parts: list[bytes] = field(default_factory=list)
    length: int = 0
    truncated: bool = False
    done: bool = False

    def add(self, chunk: QueryChunk) -> None:
        if chunk.offset != self.length:
            self.truncated = True  # a chunk in between was lost
        self.parts.append(chunk.data)
        self.length = chunk.offset + len(chunk.data)
        self.truncated |= chunk.truncated or chunk.read_fault
        self.done = chunk.last

    @property
    def sql(self) -> bytes:
        return b"".join(self.parts)

    @property
    def full_len(self) -> int:
        return max(self.first.total_len, len(self.sql))


@dataclass(slots=True)
class _Running:
    text: _Text
    sql: bytes
    error: QueryEnd | None = None
    ran: bool = False  # postgres: PortalRun ran it


@dataclass(slots=True)
class QueryCounters:
    queries: int = 0
    errors: int = 0
    truncated: int = 0
    orphan_ends: int = 0  # ends of queries that began before the capture


class QueryAssembler:
    """Assembles the queries of one kind of server."""

    def __init__(self, flavor: Flavor) -> None:
        self.flavor = flavor
        self.counters = QueryCounters()
        self._texts: OrderedDict[int, _Text] = OrderedDict()  # tid → text being copied
        self._running: OrderedDict[int, _Running] = OrderedDict()  # tid → query running
        self._prepared: OrderedDict[tuple[int, int, int], bytes] = OrderedDict()
        self._last_prepared: dict[tuple[int, int], int] = {}

    def feed(self, record: object) -> list[Query | Lost]:
        out: list[Query | Lost] = []
        if isinstance(record, QueryChunk):
            self._chunk(record, out)
        elif isinstance(record, QueryEnd):
            self._end(record, out)
        return out

    # -- text --------------------------------------------------------------------------

    def _chunk(self, chunk: QueryChunk, out: list[Query | Lost]) -> None:
        key = chunk.tid
        text = self._texts.get(key)
        if text is not None and text.first.query_id != chunk.query_id:
            del self._texts[key]  # its last chunk was lost
            text.truncated = True
            self._text_done(text, chunk.timestamp_ns, out)
            text = None
        if text is None:
            text = _Text(chunk)
            self._texts[key] = text
            self._bound(self._texts, out)
        text.add(chunk)
        if text.done:
            del self._texts[key]
            self._text_done(text, chunk.timestamp_ns, out)

    def _text_done(self, text: _Text, now_ns: int, out: list[Query | Lost]) -> None:
        first = text.first
        if text.truncated:
            self.counters.truncated += 1
            out.append(Lost(first.timestamp_ns, LossReason.KERNEL_LIMIT, 1,
                            max(text.full_len - len(text.sql), 0), pid=first.pid,
                            comm=first.comm))
        key = first.tid
        running = self._running.get(key)
        sql = text.sql
        if self.flavor is Flavor.POSTGRES and running is not None:
            if running.sql == sql and running.error is None and not running.ran:
                return  # Bind or Execute of the statement just parsed
            del self._running[key]
            self._emit(running, now_ns, running.error, out)
        elif running is not None:
            del self._running[key]  # its end was lost: the server moved on
            self._emit(running, None, None, out)
        self._running[key] = _Running(text, sql)
        self._bound(self._running, out)

    # -- end ---------------------------------------------------------------------------

    def _end(self, end: QueryEnd, out: list[Query | Lost]) -> None:
        key = end.tid
        running = self._running.get(key)
        if running is None:
            self.counters.orphan_ends += 1
            return
        if end.status is DbStatus.RUN:
            running.ran = True
            return
        if end.status is DbStatus.ERROR and self.flavor is Flavor.POSTGRES:
            running.error = end  # the idle record ends it
            return
        del self._running[key]
        error = end if end.status is DbStatus.ERROR else running.error
        self._emit(running, end.timestamp_ns, error, out, end)

    def _emit(self, running: _Running, end_ns: int | None, error: QueryEnd | None,
              out: list[Query | Lost], end: QueryEnd | None = None) -> None:
        text = running.text
        first = text.first
        sql = running.sql
        if self.flavor is Flavor.MYSQLD:
            command = COMMANDS.get(first.command, "query")
        else:
            # Parsed (a Parse message) but never run before the backend went
            # idle: a statement prepared for later Bind/Execute.
            command = ("prepare" if end_ns is not None and error is None and not running.ran
                       and sql.strip() else "query")
        stmt_id: int | None = None
        unseen = False
        connection = (first.pid, first.conn)
        if command == "prepare" and end is not None and error is None and end.stmt_id:
            stmt_id = end.stmt_id
            self._prepared[(*connection, stmt_id)] = sql
            self._last_prepared[connection] = stmt_id
            self._bound_prepared()
        elif command == "execute":
            stmt_id = int.from_bytes(sql[:4], "little") if len(sql) >= 4 else None
            if stmt_id == LAST_PREPARED:
                stmt_id = self._last_prepared.get(connection, stmt_id)
            prepared = self._prepared.get((*connection, stmt_id or 0))
            sql = prepared if prepared is not None else b""
            unseen = prepared is None
        if error is not None:
            status: str | None = "error"
        else:
            status = None if end_ns is None else "ok"
        if status == "error":
            self.counters.errors += 1
        self.counters.queries += 1
        out.append(Query(
            first.timestamp_ns, first.pid, first.tid, first.uid, first.comm,
            self.flavor.value, first.tid, command, sql,
            None if end_ns is None else max(end_ns - first.timestamp_ns, 0), status,
            text.truncated and command != "execute", text.full_len if command != "execute"
            else len(sql), stmt_id,
            error.error_code or None if error is not None else None,
            (error.sqlstate or None) if error is not None else None,
            (error.message or None) if error is not None else None, unseen,
        ))

    def _bound(self, table: OrderedDict[int, _Text] | OrderedDict[int, _Running],
               out: list[Query | Lost]) -> None:
        while len(table) > MAX_THREADS:
            _key, entry = table.popitem(last=False)
            first = entry.first if isinstance(entry, _Text) else entry.text.first
            out.append(Lost(first.timestamp_ns, LossReason.EVICTED, 1, 0, pid=first.pid,
                            comm=first.comm))

    def _bound_prepared(self) -> None:
        while len(self._prepared) > MAX_PREPARED:
            self._prepared.popitem(last=False)

    def expire(self, now_ns: int) -> Sequence[Query | Lost]:
        """Nothing ends on a timer: a query ends when the server says so."""
        return ()

    def flush(self) -> list[Query | Lost]:
        """Queries still running (or being copied) at the end: their status unknown."""
        out: list[Query | Lost] = []
        for text in list(self._texts.values()):
            text.truncated = True
            self._text_done(text, text.first.timestamp_ns, out)
        self._texts.clear()
        running, self._running = self._running, OrderedDict()
        for entry in sorted(running.values(), key=lambda item: item.text.first.timestamp_ns):
            self._emit(entry, None, entry.error, out)
        return out
