"""How a `query` is shown: the JSON contract and one text line per query."""

from __future__ import annotations

import datetime
import json

from ecapture.modules import database  # registers the Query renderers
from ecapture.output.jsonl import JsonLinesWriter
from ecapture.output.text import TextWriter
from ecapture.processor.query import Query

TS = 1_700_000_000_123_456_789
assert database.QueryEvent  # the import registers the renderers


class MemorySink:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def query(sql: bytes, status: str | None, **extra: object) -> Query:
    fields: dict[str, object] = {
        "timestamp_ns": TS, "pid": 42, "tid": 43, "uid": 0, "comm": "mariadbd",
        "database": "mysqld", "thread": 43, "command": "query", "sql": sql,
        "duration_ns": 1_500_000, "status": status, "text_len": len(sql), **extra}
    return Query(**fields)  # type: ignore[arg-type]


def test_json_keys_and_values() -> None:
    sink = MemorySink()
    writer = JsonLinesWriter("mysqld", sink)
    writer.write(query(b"select 1", "ok"))
    writer.write(query(b"select * from t", "error", error_code=1146, sqlstate="42S02",
                       error=b"Table 't' doesn't exist"))
    writer.close()
    first, second = (json.loads(line) for line in bytes(sink.data).splitlines())
    assert first == {
        "type": "query", "module": "mysqld", "ts": TS, "pid": 42, "tid": 43,
        "comm": "mariadbd", "uid": 0, "db_pid": 42, "thread": 43, "command": "query",
        "sql": "select 1", "duration_ns": 1_500_000, "status": "ok", "truncated": False,
        "sql_len": 8,
    }
    assert (second["status"], second["error_code"], second["sqlstate"], second["error"]) == (
        "error", 1146, "42S02", "Table 't' doesn't exist")


def test_text_is_one_escaped_line_per_query() -> None:
    sink = MemorySink()
    writer = TextWriter("mysqld", sink, timezone=datetime.UTC)
    writer.write(query(b"select 1,\n 2", "ok"))
    writer.write(query(b"select \x1b[31m", "error", error_code=1064))
    writer.write(query(b"x" * 10, None, duration_ns=None, truncated=True, text_len=99))
    writer.write(query(b"select ?", "ok", command="execute", stmt_id=3, duration_ns=900))
    writer.close()
    lines = bytes(sink.data).decode().splitlines()
    assert len(lines) == 4
    assert lines[0].endswith("mysqld pid 42 thread 43 query 1.500ms ok: select 1,\\n 2")
    assert "\x1b" not in lines[1] and "error 1064" in lines[1]
    assert "query ? status ? [cut at 10 of 99 bytes]" in lines[2]
    assert "execute #3 1us ok: select ?" in lines[3]
