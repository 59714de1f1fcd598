"""The formats of db_events.py against the BTF of mysqld.bpf.o and postgres.bpf.o."""

from __future__ import annotations

from typing import Any

import pytest
from btf_layout import btf_structs as btf_structs_of
from btf_layout import offsets

from ecapture import db_events


@pytest.fixture(scope="module", params=["mysqld.bpf.o", "postgres.bpf.o"])
def btf_structs(request: pytest.FixtureRequest) -> dict[str, dict[str, Any]]:
    return btf_structs_of(request.param)


def test_db_header(btf_structs: dict[str, dict[str, Any]]) -> None:
    header = btf_structs["db_header"]
    assert header["size"] == db_events.DB_HEADER.size
    assert offsets(header) == {
        "kind": 0, "pid": 4, "tid": 8, "uid": 12, "timestamp_ns": 16, "comm": 24,
    }


def test_db_query_chunk(btf_structs: dict[str, dict[str, Any]]) -> None:
    chunk = btf_structs["db_query_chunk"]
    base = db_events.DB_HEADER.size
    assert offsets(chunk) == {
        "header": 0, "query_id": base, "conn": base + 8, "offset": base + 16,
        "data_len": base + 20, "total_len": base + 24, "command": base + 28,
        "flags": base + 29, "_pad0": base + 30, "data": db_events.CHUNK_HEADER_SIZE,
    }
    assert chunk["size"] == db_events.CHUNK_HEADER_SIZE + db_events.DB_CHUNK_SIZE


def test_db_query_end(btf_structs: dict[str, dict[str, Any]]) -> None:
    end = btf_structs["db_query_end"]
    base = db_events.DB_HEADER.size
    assert offsets(end) == {
        "header": 0, "conn": base, "status": base + 8, "error_code": base + 12,
        "stmt_id": base + 16, "command": base + 20, "_pad0": base + 21,
        "message_len": base + 22, "sqlstate": base + 24, "message": db_events.END_HEADER_SIZE,
    }
    assert end["size"] == db_events.END_HEADER_SIZE + db_events.DB_MESSAGE_SIZE
