"""The query assembler on record sequences as the kernel sends them."""

from __future__ import annotations

import pytest

from ecapture.db_events import (
    DbStatus,
    QueryChunk,
    QueryEnd,
    decode_chunk,
    decode_end,
    encode_chunk,
    encode_end,
)
from ecapture.errors import DecodeError
from ecapture.events import Clock, LossReason, Lost
from ecapture.processor.query import (
    COM_QUERY,
    COM_STMT_EXECUTE,
    COM_STMT_PREPARE,
    Flavor,
    Query,
    QueryAssembler,
)

CLOCK = Clock(1_000)
PID, THD = 100, 0x7F00_0000_1000


def chunk(ts: int, data: bytes, *, tid: int = 7, offset: int = 0, last: bool = True,
          query_id: int | None = None, total: int = 0, command: int = COM_QUERY,
          truncated: bool = False, conn: int = THD) -> QueryChunk:
    return QueryChunk(ts, PID, tid, 0, "mariadbd", ts if query_id is None else query_id, conn,
                      offset, data, total, command, last, truncated, False)


def end(ts: int, status: DbStatus = DbStatus.OK, *, tid: int = 7, stmt_id: int = 0,
        code: int = 0, message: bytes = b"", sqlstate: str = "",
        command: int = COM_QUERY) -> QueryEnd:
    return QueryEnd(ts, PID, tid, 0, "mariadbd", THD, status, code, stmt_id, command, sqlstate,
                    message)


def feed(assembler: QueryAssembler, *records: object) -> list[Query | Lost]:
    out: list[Query | Lost] = []
    for record in records:
        out += assembler.feed(record)
    return out


def test_records_round_trip_through_their_wire_form() -> None:
    first = chunk(5_000, b"select 1", total=8)
    assert decode_chunk(encode_chunk(first, CLOCK), CLOCK) == first
    last = end(9_000, DbStatus.ERROR, code=1146, message=b"Table 'x' doesn't exist",
               sqlstate="42S02")
    assert decode_end(encode_end(last, CLOCK), CLOCK) == last


def test_a_short_record_is_refused() -> None:
    raw = encode_chunk(chunk(5_000, b"select 1"), CLOCK)
    with pytest.raises(DecodeError):
        decode_chunk(raw[:-1], CLOCK)


def test_mysqld_query_with_its_duration_and_error() -> None:
    assembler = QueryAssembler(Flavor.MYSQLD)
    out = feed(assembler, chunk(1_000, b"select 1", total=8), end(4_000),
               chunk(5_000, b"select * from nope", total=18),
               end(5_500, DbStatus.ERROR, code=1146, message=b"no table", sqlstate="42S02"))
    assert [(q.sql, q.duration_ns, q.status) for q in out if isinstance(q, Query)] == [
        (b"select 1", 3_000, "ok"), (b"select * from nope", 500, "error")]
    failed = out[1]
    assert isinstance(failed, Query)
    assert (failed.error_code, failed.sqlstate, failed.error) == (1146, "42S02", b"no table")
    assert assembler.counters.errors == 1


def test_mysqld_text_in_chunks_is_joined() -> None:
    assembler = QueryAssembler(Flavor.MYSQLD)
    text = b"a" * 10 + b"b" * 10 + b"c" * 3
    out = feed(assembler,
               chunk(1_000, text[:10], last=False, total=len(text)),
               chunk(1_001, text[10:20], offset=10, last=False, query_id=1_000, total=len(text)),
               chunk(1_002, text[20:], offset=20, query_id=1_000, total=len(text)),
               end(2_000))
    [query] = out
    assert isinstance(query, Query) and query.sql == text and not query.truncated
    assert query.timestamp_ns == 1_000 and query.duration_ns == 1_000


def test_a_cut_text_is_flagged_and_counted() -> None:
    assembler = QueryAssembler(Flavor.MYSQLD)
    out = feed(assembler, chunk(1_000, b"x" * 10, total=25, truncated=True), end(2_000))
    lost, query = out
    assert isinstance(lost, Lost) and lost.reason is LossReason.KERNEL_LIMIT
    assert (lost.records, lost.bytes, lost.pid) == (1, 15, PID)
    assert isinstance(query, Query) and query.truncated and query.text_len == 25


def test_a_lost_chunk_in_between_flags_the_text() -> None:
    assembler = QueryAssembler(Flavor.MYSQLD)
    out = feed(assembler, chunk(1_000, b"x" * 10, last=False, total=30),
               chunk(1_002, b"z" * 10, offset=20, query_id=1_000, total=30), end(2_000))
    assert isinstance(out[0], Lost) and isinstance(out[1], Query) and out[1].truncated


def test_mysqld_execute_shows_the_text_prepared_under_its_id() -> None:
    assembler = QueryAssembler(Flavor.MYSQLD)
    prepare = b"select ? + 1"
    out = feed(
        assembler,
        chunk(1_000, prepare, command=COM_STMT_PREPARE, total=len(prepare)),
        end(1_500, stmt_id=3, command=COM_STMT_PREPARE),
        chunk(2_000, (3).to_bytes(4, "little"), command=COM_STMT_EXECUTE, total=4),
        end(2_100, command=COM_STMT_EXECUTE),
        chunk(3_000, b"\xff\xff\xff\xff", command=COM_STMT_EXECUTE, total=4),
        end(3_100, command=COM_STMT_EXECUTE),
        chunk(4_000, (9).to_bytes(4, "little"), command=COM_STMT_EXECUTE, total=4),
        end(4_100, command=COM_STMT_EXECUTE),
    )
    queries = [q for q in out if isinstance(q, Query)]
    assert [(q.command, q.stmt_id, q.sql, q.statement_unseen) for q in queries] == [
        ("prepare", 3, prepare, False), ("execute", 3, prepare, False),
        ("execute", 3, prepare, False),  # 0xffffffff: MariaDB's "the last prepared"
        ("execute", 9, b"", True),  # prepared before the capture
    ]


def test_prepared_ids_are_per_connection() -> None:
    assembler = QueryAssembler(Flavor.MYSQLD)
    out = feed(
        assembler,
        chunk(1_000, b"select 1", command=COM_STMT_PREPARE, total=8),
        end(1_500, stmt_id=1, command=COM_STMT_PREPARE),
        chunk(2_000, (1).to_bytes(4, "little"), command=COM_STMT_EXECUTE, total=4,
              conn=THD + 64, tid=8),
        end(2_100, command=COM_STMT_EXECUTE, tid=8),
    )
    execute = out[-1]
    assert isinstance(execute, Query) and execute.statement_unseen and execute.sql == b""


def test_mysqld_a_new_query_on_a_thread_whose_end_was_lost() -> None:
    assembler = QueryAssembler(Flavor.MYSQLD)
    out = feed(assembler, chunk(1_000, b"select 1"), chunk(2_000, b"select 2"), end(2_500))
    assert [(q.sql, q.status) for q in out if isinstance(q, Query)] == [
        (b"select 1", None), (b"select 2", "ok")]


def test_an_end_with_no_query_is_counted_not_shown() -> None:
    assembler = QueryAssembler(Flavor.MYSQLD)
    assert feed(assembler, end(1_000)) == []
    assert assembler.counters.orphan_ends == 1


def pg_chunk(ts: int, text: bytes, *, pid: int = 200) -> QueryChunk:
    return QueryChunk(ts, pid, pid, 0, "postgres", ts, 0, 0, text, 0, 0, True, False, False)


def pg_end(ts: int, status: DbStatus, *, pid: int = 200) -> QueryEnd:
    return QueryEnd(ts, pid, pid, 0, "postgres", 0, status, 0, 0, 0, "", b"")


def summary(out: list[Query | Lost]) -> list[tuple[bytes, str, int | None, str | None]]:
    return [(q.sql, q.command, q.duration_ns, q.status) for q in out if isinstance(q, Query)]


def test_postgres_extended_protocol_reports_are_one_query() -> None:
    assembler = QueryAssembler(Flavor.POSTGRES)
    text = b"select $1::int"
    # Parse, Bind, Execute each report the text; PortalRun runs it.
    out = feed(assembler, pg_chunk(1_000, text), pg_chunk(1_100, text), pg_chunk(1_200, text),
               pg_end(1_300, DbStatus.RUN), pg_end(1_900, DbStatus.IDLE))
    assert summary(out) == [(text, "query", 900, "ok")]


def test_postgres_error_then_idle() -> None:
    assembler = QueryAssembler(Flavor.POSTGRES)
    out = feed(assembler, pg_chunk(1_000, b"select 1/0"), pg_end(1_100, DbStatus.RUN),
               pg_end(1_300, DbStatus.ERROR), pg_end(1_400, DbStatus.IDLE),
               pg_chunk(2_000, b"select 1"), pg_end(2_050, DbStatus.RUN),
               pg_end(2_100, DbStatus.IDLE))
    assert summary(out) == [(b"select 1/0", "query", 400, "error"),
                            (b"select 1", "query", 100, "ok")]


def test_postgres_pipelined_queries_end_at_the_next_one() -> None:
    assembler = QueryAssembler(Flavor.POSTGRES)
    out = feed(assembler, pg_chunk(1_000, b"insert 1"), pg_end(1_100, DbStatus.RUN),
               pg_chunk(1_200, b"insert 2"), pg_end(1_300, DbStatus.RUN),
               pg_end(1_500, DbStatus.IDLE))
    assert summary(out) == [(b"insert 1", "query", 200, "ok"), (b"insert 2", "query", 300, "ok")]


def test_postgres_one_text_run_again_in_a_pipeline_is_each_execution() -> None:
    assembler = QueryAssembler(Flavor.POSTGRES)
    text = b"insert into t values ($1)"
    records: list[object] = [pg_chunk(1_000, text)]  # Parse
    for step in range(3):  # Bind, Execute, PortalRun per row (executemany)
        at = 1_100 + step * 300
        records += [pg_chunk(at, text), pg_chunk(at + 100, text), pg_end(at + 150, DbStatus.RUN)]
    out = feed(assembler, *records, pg_end(2_500, DbStatus.IDLE))
    assert summary(out) == [(text, "query", 400, "ok"), (text, "query", 300, "ok"),
                            (text, "query", 800, "ok")]


def test_postgres_a_text_parsed_but_not_run_is_a_prepare() -> None:
    assembler = QueryAssembler(Flavor.POSTGRES)
    out = feed(assembler, pg_chunk(1_000, b"select 1"), pg_end(1_200, DbStatus.IDLE),
               pg_chunk(2_000, b""), pg_end(2_100, DbStatus.IDLE))
    assert summary(out) == [(b"select 1", "prepare", 200, "ok"), (b"", "query", 100, "ok")]


def test_postgres_backends_are_apart() -> None:
    assembler = QueryAssembler(Flavor.POSTGRES)
    out = feed(assembler, pg_chunk(1_000, b"a", pid=1), pg_chunk(1_100, b"b", pid=2),
               pg_end(1_150, DbStatus.RUN, pid=1), pg_end(1_160, DbStatus.RUN, pid=2),
               pg_end(1_500, DbStatus.IDLE, pid=2), pg_end(1_600, DbStatus.IDLE, pid=1))
    assert [(q.sql, q.thread, q.duration_ns) for q in out if isinstance(q, Query)] == [
        (b"b", 2, 400), (b"a", 1, 600)]


def test_flush_hands_over_running_queries_with_status_unknown() -> None:
    assembler = QueryAssembler(Flavor.POSTGRES)
    assert feed(assembler, pg_chunk(1_000, b"select pg_sleep(100)")) == []
    [query] = assembler.flush()
    assert isinstance(query, Query) and query.status is None and query.duration_ns is None
    assert assembler.flush() == []
