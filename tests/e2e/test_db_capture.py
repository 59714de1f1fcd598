"""`ecapture mysqld` and `ecapture postgres` on real servers (tests/e2e/databases.py).

Each test starts its server first, so the capture must find it by /proc
(no --mysqld / --postgres), then drives real clients: the `mariadb` client
and mysql-connector-python with server-side prepared statements; psql (the
simple protocol) and psycopg (the extended protocol, with parameters). Every
statement carries a marker unique to the run; each must come out once, with
its duration and status.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from .capture import COMMON_KEYS, Ecapture, Event, assert_clean_stop, capture, run_tool
from .conftest import require_programs
from .databases import (
    HOST,
    DbServer,
    mariadb_server,
    mariadbd_binary,
    postgres_bin,
    postgres_server,
    run_mariadb,
    run_psql,
)

QUERY_KEYS = COMMON_KEYS | {"sql", "duration_ns", "status", "db_pid", "thread", "truncated"}
SLEEP_S = 0.2


def queries_with(events: Sequence[Event], marker: str) -> list[Event]:
    return [event for event in events if event["type"] == "query" and marker in event["sql"]]


def the_one(events: Sequence[Event], text: str) -> Event:
    """The one query whose sql is exactly `text`, checked for the contract's keys."""
    found = [event for event in events if event["type"] == "query" and event["sql"] == text]
    assert len(found) == 1, (text, [event["sql"][:200] for event in events
                                    if event["type"] == "query"])
    event = found[0]
    assert event.keys() >= QUERY_KEYS, event
    assert isinstance(event["duration_ns"], int) and event["duration_ns"] > 0, event
    return event


@pytest.fixture
def mariadb(tmp_path: Path) -> Iterator[DbServer]:
    require_programs("mariadb", "mariadb-install-db")
    if mariadbd_binary() is None:
        pytest.skip("needs mariadbd (Debian package mariadb-server)")
    with mariadb_server(tmp_path / "mariadb") as server:
        yield server


@pytest.fixture
def postgres() -> Iterator[DbServer]:
    require_programs("psql", "runuser")
    if postgres_bin() is None:
        pytest.skip("needs postgres (Debian package postgresql)")
    # Not under pytest's tmp_path: another pytest run on the machine resets
    # /tmp/pytest-of-root to 0700, and the postgres user must reach its files.
    directory = Path(tempfile.mkdtemp(prefix="ecapture-e2e-postgres-"))
    try:
        with postgres_server(directory) as server:
            yield server
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_mariadb_queries_prepared_statements_and_errors(
    ecapture: Ecapture, tmp_path: Path, mariadb: DbServer
) -> None:
    connector = pytest.importorskip("mysql.connector",
                                    reason="needs mysql-connector-python (dev extras)")
    marker = f"m{uuid.uuid4().hex[:12]}"
    plain = f"select '{marker}-plain', sleep({SLEEP_S})"
    failing = f"select * from mysql.{marker}_missing"
    prepared = f"select ? as {marker}_prepared, ? + 1"
    with capture(ecapture, tmp_path / "capture", module="mysqld") as running:
        run_mariadb(mariadb, plain)
        done = run_mariadb(mariadb, failing, check=False)
        assert done.returncode != 0 and "1146" in done.stderr, done.stderr
        connection = connector.connect(host=HOST, port=mariadb.port, user="root",
                                       connection_timeout=20)
        try:
            cursor = connection.cursor(prepared=True)
            cursor.execute(prepared, (f"{marker}-value", 41))
            assert cursor.fetchall() == [(f"{marker}-value", 42)]
            cursor.close()
        finally:
            connection.close()
    result = running.result
    assert_clean_stop(result, [mariadb.pid])
    events = result.events
    assert f"{mariadb.binary}" in result.stderr  # found running, no --mysqld

    query = the_one(events, plain)
    assert (query["status"], query["command"], query["db_pid"]) == ("ok", "query", mariadb.pid)
    assert query["duration_ns"] >= SLEEP_S * 1e9, query
    assert query["thread"] != mariadb.pid  # a connection thread, not the main one

    error = the_one(events, failing)
    assert (error["status"], error["error_code"], error["sqlstate"]) == ("error", 1146, "42S02")
    assert f"{marker}_missing" in error["error"]

    statements = [event for event in queries_with(events, f"{marker}_prepared")]
    assert [(event["command"], event["status"]) for event in statements] == [
        ("prepare", "ok"), ("execute", "ok")], statements
    prepare, execute = statements
    assert prepare["sql"] == execute["sql"] == prepared
    assert prepare["stmt_id"] == execute["stmt_id"] and prepare["stmt_id"] > 0
    assert prepare["thread"] == execute["thread"]
    assert not any(event.get("statement_unseen") for event in statements)
    assert len(queries_with(events, marker)) == 4  # each statement once


def test_mysqld_refuses_a_binary_without_dispatch_command(ecapture: Ecapture) -> None:
    run = run_tool(ecapture, "mysqld", "--mysqld", "/bin/true")
    line = run.error_line()
    assert "dispatch_command" in line and "/bin/true" in line, line


def test_postgres_simple_and_extended_protocol(
    ecapture: Ecapture, tmp_path: Path, postgres: DbServer
) -> None:
    psycopg = pytest.importorskip("psycopg", reason="needs psycopg (dev extras)")
    marker = f"p{uuid.uuid4().hex[:12]}"
    simple = f"select '{marker}-simple', pg_sleep({SLEEP_S})"
    failing = f"select * from {marker}_missing"
    copy = f"copy (select '{marker}-copy') to stdout"
    extended = f"select %s::text as {marker}_extended, %s::int + 1"
    extended_failing = f"select 1 / %s as {marker}_zero"
    big = f"select '{marker}-big-" + "x" * (100 * 1024) + "' as big"
    pipelined = f"select %s::int as {marker}_pipelined"
    # An error caught inside a function: the statement succeeds, and the
    # statements the function runs are not queries of their own.
    caught = (f"do $$ begin perform 1 / 0; exception when division_by_zero then "
              f"raise notice '{marker}-caught'; end $$")
    with capture(ecapture, tmp_path / "capture", module="postgres") as running:
        run_psql(postgres, simple)
        assert f"{marker}-caught" in run_psql(postgres, caught).stderr
        done = run_psql(postgres, failing, check=False)
        assert done.returncode != 0 and "does not exist" in done.stderr, done.stderr
        assert marker in run_psql(postgres, copy).stdout
        with psycopg.connect(host=HOST, port=postgres.port, user="postgres",
                             dbname="postgres", autocommit=True, connect_timeout=20) as conn:
            row = conn.execute(extended, (f"{marker}-value", 41)).fetchone()
            assert row == (f"{marker}-value", 42)
            with pytest.raises(psycopg.errors.DivisionByZero):
                conn.execute(extended_failing, (0,))
            fetched = conn.execute(big).fetchone()
            assert fetched is not None and len(fetched[0]) > 100 * 1024
            # executemany pipelines its executions: one Sync for all three.
            conn.cursor().executemany(pipelined, [(1,), (2,), (3,)])
    result = running.result
    assert_clean_stop(result)
    events = result.events
    assert f"{postgres.binary}" in result.stderr  # found running, no --postgres

    query = the_one(events, simple)
    assert query["status"] == "ok" and query["duration_ns"] >= SLEEP_S * 1e9, query
    assert query["db_pid"] == query["thread"] != postgres.pid  # a backend, not the postmaster
    assert the_one(events, failing)["status"] == "error"
    assert the_one(events, copy)["status"] == "ok"
    assert the_one(events, caught)["status"] == "ok"
    # psycopg sends $1, $2 for %s: the text the server parsed.
    assert the_one(events, f"select $1::text as {marker}_extended, $2::int + 1")["status"] == "ok"
    assert the_one(events, f"select 1 / $1 as {marker}_zero")["status"] == "error"
    whole = the_one(events, big)
    assert whole["status"] == "ok" and not whole["truncated"] and whole["sql_len"] == len(big)
    runs = queries_with(events, f"select $1::int as {marker}_pipelined")
    assert [(event["command"], event["status"]) for event in runs] == [("query", "ok")] * 3
    assert len(queries_with(events, marker)) == 10  # each execution once


def test_postgres_query_past_the_limit_is_cut_and_counted(
    ecapture: Ecapture, tmp_path: Path, postgres: DbServer
) -> None:
    psycopg = pytest.importorskip("psycopg", reason="needs psycopg (dev extras)")
    marker = f"p{uuid.uuid4().hex[:12]}"
    huge = f"select '{marker}-huge-" + "y" * (1 << 20) + "' as huge"
    with (capture(ecapture, tmp_path / "capture", module="postgres") as running,
          psycopg.connect(host=HOST, port=postgres.port, user="postgres", dbname="postgres",
                          autocommit=True, connect_timeout=20) as conn):
        conn.execute(huge).fetchone()
    result = running.result
    assert result.exit_code == 0, result.stderr
    [query] = queries_with(result.events, marker)
    assert query["truncated"] and query["status"] == "ok"
    # 64 chunks of 16 KiB, each chunk's NUL-terminated copy holding 16383 bytes.
    assert query["sql"] == huge[:64 * 16383]
    lost = [event for event in result.events
            if event["type"] == "lost" and event["reason"] == "kernel_limit"]
    assert lost and lost[0]["pid"] == query["pid"], lost
    assert "1 cut" in result.stderr or "queries cut" in result.stderr
