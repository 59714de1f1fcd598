"""The Python struct formats of events.py against the BTF of the built object.

bpf/events.h is the one declaration; a field moved there without the same
change in events.py fails here (after bpf2go's generated mirrors).
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Any

import pytest
from btf_layout import btf_structs as btf_structs_of
from btf_layout import offsets

from ecapture import events


@pytest.fixture(scope="module")
def btf_structs() -> dict[str, dict[str, Any]]:
    return btf_structs_of("tls.bpf.o")


def test_record_header(btf_structs: dict[str, dict[str, Any]]) -> None:
    header = btf_structs["record_header"]
    assert header["size"] == events.RECORD_HEADER.size
    assert offsets(header) == {
        "kind": 0, "pid": 4, "tid": 8, "uid": 12, "timestamp_ns": 16, "conn_id": 24, "ssl": 32,
        "socket_cookie": 40, "comm": 48,
    }


def test_tls_data_event(btf_structs: dict[str, dict[str, Any]]) -> None:
    event = btf_structs["tls_data_event"]
    fields = offsets(event)
    assert fields["data"] == events.TLS_DATA_HEADER_SIZE
    assert event["size"] == events.TLS_DATA_HEADER_SIZE + events.MAX_CHUNK_SIZE
    # Each field at the offset its position in TLS_DATA_FIELDS gives.
    base = events.RECORD_HEADER.size
    expected = {
        "fd": "<", "direction": "<i", "flags": "<iB", "call_id": "<iBBxx",
        "call_len": "<iBBxxQ", "offset": "<iBBxxQQ", "data_len": "<iBBxxQQQ",
        "lost_records": "<iBBxxQQQI", "lost_bytes": "<iBBxxQQQII",
        "local": "<iBBxxQQQIIQ", "remote": "<iBBxxQQQIIQHH16s",
    }
    for name, prefix in expected.items():
        assert fields[name] == base + struct.calcsize(prefix), name
    assert btf_structs["sock_addr"]["size"] == struct.calcsize("<HH16s")


def test_conn_close_event(btf_structs: dict[str, dict[str, Any]]) -> None:
    event = btf_structs["conn_close_event"]
    assert event["size"] == events.CONN_CLOSE_SIZE
    base = events.RECORD_HEADER.size
    assert offsets(event) == {
        "header": 0, "fd": base, "lost_records": base + 4, "lost_bytes": base + 8,
        "cause": base + 16, "flags": base + 17, "_pad0": base + 18, "_pad1": base + 20,
    }


EVENTS_H = Path(__file__).resolve().parents[2] / "bpf/events.h"


def enumerators(prefix: str) -> dict[str, int]:
    """`PREFIX_NAME = value,` lines of events.h (enums reach BTF only when used as a type)."""
    found = re.findall(rf"^\s*{prefix}(\w+) = (\d+),", EVENTS_H.read_text(), re.MULTILINE)
    return {name: int(value) for name, value in found}


def test_close_causes_and_stats_match() -> None:
    from ecapture.modules.base import Stat

    causes = {name.lower(): value for name, value in enumerators("CLOSE_").items()}
    assert causes == {cause.value: code for code, cause in events._CLOSE_CAUSES.items()}
    stats = enumerators("STAT_")
    assert stats.pop("MAX") == 8
    assert stats == {stat.name: stat.value for stat in Stat}


def test_flags_are_those_of_events_h() -> None:
    header = EVENTS_H.read_text()
    for name in ("DATA_FLAG_LAST_CHUNK", "DATA_FLAG_TRUNCATED", "DATA_FLAG_READ_FAULT",
                 "CLOSE_FLAG_DEFERRED"):
        match = re.search(rf"#define {name}\s+\(1 << (\d)\)", header)
        assert match is not None, name
        assert getattr(events, name) == 1 << int(match.group(1)), name
