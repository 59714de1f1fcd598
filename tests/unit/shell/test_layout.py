"""The formats of shell_events.py against the BTF of bash.bpf.o and zsh.bpf.o."""

from __future__ import annotations

from typing import Any

import pytest
from btf_layout import btf_structs as btf_structs_of
from btf_layout import offsets

from ecapture import shell_events


@pytest.fixture(scope="module", params=["bash.bpf.o", "zsh.bpf.o"])
def btf_structs(request: pytest.FixtureRequest) -> dict[str, dict[str, Any]]:
    return btf_structs_of(request.param)


def test_shell_header(btf_structs: dict[str, dict[str, Any]]) -> None:
    header = btf_structs["shell_header"]
    assert header["size"] == shell_events.SHELL_HEADER.size
    assert offsets(header) == {
        "kind": 0, "pid": 4, "tid": 8, "uid": 12, "timestamp_ns": 16, "comm": 24,
    }


def test_shell_line_event(btf_structs: dict[str, dict[str, Any]]) -> None:
    event = btf_structs["shell_line_event"]
    base = shell_events.SHELL_HEADER.size
    assert offsets(event) == {
        "header": 0, "tty": base, "source": base + 64, "flags": base + 65,
        "_pad0": base + 66, "line_len": base + 68, "full_len": base + 72,
        "_pad1": base + 76, "line": shell_events.LINE_HEADER_SIZE,
    }
    assert event["size"] == shell_events.LINE_HEADER_SIZE + shell_events.MAX_LINE_SIZE


def test_shell_status_event(btf_structs: dict[str, dict[str, Any]]) -> None:
    event = btf_structs["shell_status_event"]
    base = shell_events.SHELL_HEADER.size
    assert event["size"] == shell_events.STATUS_SIZE
    assert offsets(event) == {"header": 0, "source": base, "_pad0": base + 1,
                              "status": base + 4}
