"""The reassembly and contract checks of capture.py on hand-made events."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from .capture import (
    StreamKey,
    contract_problems,
    find_marker,
    marker_holders,
    our_program_names,
    streams,
)

pytestmark = pytest.mark.e2e


def data(
    payload: bytes, *, pid: int = 10, conn: int = 1, direction: str = "send",
    offset: int = 0, length: int | None = None, truncated: bool = False,
) -> dict[str, Any]:
    return {
        "type": "data", "module": "tls", "ts": 1, "pid": pid, "tid": pid, "comm": "curl",
        "uid": 0, "fd": 5, "conn_id": conn, "direction": direction,
        "src": "127.0.0.1:40000", "dst": "127.0.0.1:443",
        "len": len(payload) if length is None else length, "offset": offset,
        "truncated": truncated, "payload_b64": base64.b64encode(payload).decode(),
    }


def test_streams_concatenate_per_pid_conn_and_direction_in_file_order() -> None:
    events = [
        data(b"GET /a"),
        data(b"HTTP/1.1", direction="recv"),
        data(b"-other", conn=2),
        data(b" HTTP/1.1\r\n"),
        {"type": "close", "module": "tls", "ts": 2, "pid": 10, "tid": 10, "comm": "curl",
         "uid": 0, "fd": 5, "conn_id": 1},
    ]
    found = streams(events)
    assert found[StreamKey(10, 1, "send")].data == b"GET /a HTTP/1.1\r\n"
    assert found[StreamKey(10, 1, "recv")].data == b"HTTP/1.1"
    assert found[StreamKey(10, 2, "send")].data == b"-other"
    # a marker split across two events is found in the reassembled stream only
    assert [s.key for s in find_marker(events, b"/a HTTP")] == [StreamKey(10, 1, "send")]
    assert marker_holders(events, b"HTTP/1.1") == {(10, "send"), (10, "recv")}


def test_contract_accepts_a_call_in_chunks() -> None:
    events = [
        data(b"a" * 4, offset=0, length=10),
        data(b"b" * 4, offset=4, length=10),
        data(b"c" * 2, offset=8, length=10),
        data(b"cut", offset=0, length=100, truncated=True),
    ]
    assert contract_problems(events) == []


@pytest.mark.parametrize(
    ("events", "problem"),
    [
        ([data(b"abcd", offset=0, length=10)], "ended early"),
        ([data(b"abcd", offset=0, length=10), data(b"efgh", offset=5, length=10)], "follow"),
        ([data(b"abcd", offset=0, length=2)], "> len"),
        ([data(b"x") | {"direction": "out"}], "direction"),
        ([data(b"x") | {"src": "localhost"}], "ip:port"),
        ([{k: v for k, v in data(b"x").items() if k != "conn_id"}], "lacks"),
        ([{"type": "close"}], "lacks"),
    ],
)
def test_contract_finds_broken_events(events: list[dict[str, Any]], problem: str) -> None:
    problems = contract_problems(events)
    assert problems
    assert any(problem in text for text in problems), problems


def test_our_program_names_come_from_the_bpf_source(tmp_path: Any) -> None:
    source = tmp_path / "x.bpf.c"
    source.write_text(
        'SEC("uprobe")\nint BPF_KPROBE(send_plain_enter)\n{}\n'
        'SEC("raw_tp/sys_enter")\nint sys_enter(struct bpf_raw_tracepoint_args *ctx)\n{}\n'
        'SEC("uretprobe")\nint BPF_KRETPROBE(call_return, int ret)\n{}\n'
    )
    assert our_program_names(source) == {"send_plain_enter", "sys_enter", "call_return"}
