"""struct tc_packet_event and struct sock_owner: decoder, and formats against tc.bpf.o's BTF."""

from __future__ import annotations

from typing import Any

import pytest
from btf_layout import btf_structs as btf_structs_of
from btf_layout import offsets

from ecapture.errors import DecodeError
from ecapture.packets import RECORD_TC_PACKET, TC_EGRESS, TC_PACKET_HEADER, decode_packet


def record(data: bytes, *, caplen: int | None = None, kind: int = RECORD_TC_PACKET) -> bytes:
    size = len(data) if caplen is None else caplen
    return TC_PACKET_HEADER.pack(kind, 1, 123, 0xC00C1E, 1500, size, TC_EGRESS) + data


def test_decodes_header_and_captured_bytes() -> None:
    packet = decode_packet(record(b"\x01\x02\x03"))
    assert (packet.ifindex, packet.timestamp_ns, packet.socket_cookie) == (1, 123, 0xC00C1E)
    assert (packet.length, packet.direction, packet.data) == (1500, TC_EGRESS, b"\x01\x02\x03")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (record(b"")[:-1], "shorter than its header"),
        (record(b"ab", caplen=3), "caplen 3"),
        (record(b"", kind=1), "not a tc packet"),
    ],
)
def test_malformed_records_are_refused(raw: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode_packet(raw)


@pytest.fixture(scope="module")
def btf_structs() -> dict[str, dict[str, Any]]:
    return btf_structs_of("tc.bpf.o")


def test_tc_packet_event_layout(btf_structs: dict[str, dict[str, Any]]) -> None:
    event = btf_structs["tc_packet_event"]
    assert offsets(event) == {
        "kind": 0, "ifindex": 4, "timestamp_ns": 8, "socket_cookie": 16, "len": 24,
        "caplen": 28, "direction": 32, "_pad": 33, "data": TC_PACKET_HEADER.size,
    }
    assert event["size"] == TC_PACKET_HEADER.size + 65536


def test_sock_owner_layout(btf_structs: dict[str, dict[str, Any]]) -> None:
    # tests/e2e/test_tc_pcapng.py reads it as "<II16s"
    owner = btf_structs["sock_owner"]
    assert offsets(owner) == {"pid": 0, "tid": 4, "comm": 8}
    assert owner["size"] == 24
