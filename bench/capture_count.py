"""Count what a capture file holds, independently of the tool that wrote it.

Ours (`--format json`): one object per line; "data" events carry pid, conn_id, direction,
payload_b64 (the exact bytes, base64); "lost" events carry reason, records, bytes. A request line
may span two chunks, so the payloads are reassembled per (pid, conn_id, direction) in file order
before counting. Peers write text: there the request line is counted in the raw output.
"""

from __future__ import annotations

import base64
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

REQUEST_LINE = b"GET / HTTP/1.1"
# RFC 9113 §3.4: the client connection preface, then frames with a 9-byte header (§4.1).
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_FRAME_HEADERS = 0x1


class _Event(msgspec.Struct):
    type: str
    pid: int | None = None
    conn_id: int | None = None
    fd: int | None = None
    direction: str = ""
    payload_b64: str = ""
    records: int | None = None
    bytes: int | None = None
    reason: str | None = None


@dataclass(slots=True)
class JsonCapture:
    """What one JSON-lines capture file holds."""

    data_events: int = 0
    data_events_by_pid: dict[int, int] = field(default_factory=dict)
    lost_records: int = 0
    lost_bytes: int = 0
    lost_events: int = 0
    lost_by_reason: dict[str, int] = field(default_factory=dict)
    streams: dict[tuple[int, int, str], bytearray] = field(default_factory=dict)
    first_data_offset: int | None = None

    def request_lines(self) -> int:
        return sum(stream.count(REQUEST_LINE) for stream in self.streams.values())

    def h2_request_headers(self) -> int:
        """HEADERS frames sent by HTTP/2 clients: counted in every stream that begins with the
        client preface (the client's sends and the server's receives). A gap ends the count of
        its stream (frames cannot be resynchronised), so this is an honest lower bound."""
        total = 0
        for stream in self.streams.values():
            if not stream.startswith(H2_PREFACE):
                continue
            position = len(H2_PREFACE)
            while position + 9 <= len(stream):
                length = int.from_bytes(stream[position : position + 3], "big")
                if stream[position + 3] == H2_FRAME_HEADERS:
                    total += 1
                position += 9 + length
        return total


def read_json_capture(path: Path, *, reassemble: bool = True) -> JsonCapture:
    """Read a JSON-lines capture; with `reassemble`, keep every stream's bytes for counting."""
    capture = JsonCapture()
    decoder = msgspec.json.Decoder(_Event)
    streams: defaultdict[tuple[int, int, str], bytearray] = defaultdict(bytearray)
    by_pid: defaultdict[int, int] = defaultdict(int)
    with path.open("rb") as lines:
        for line in lines:
            if not line.strip():
                continue
            event = decoder.decode(line)
            if event.type == "data":
                capture.data_events += 1
                by_pid[event.pid or 0] += 1
                if reassemble:
                    connection = event.conn_id if event.conn_id is not None else (event.fd or 0)
                    streams[(event.pid or 0, connection, event.direction)] += base64.b64decode(
                        event.payload_b64
                    )
            elif event.type == "lost":
                capture.lost_events += 1
                capture.lost_records += event.records or 0
                capture.lost_bytes += event.bytes or 0
                reason = event.reason or "unknown"
                capture.lost_by_reason[reason] = (
                    capture.lost_by_reason.get(reason, 0) + (event.records or 0))
    capture.streams = dict(streams)
    capture.data_events_by_pid = dict(by_pid)
    return capture


def count_in_text(path: Path, needle: bytes = REQUEST_LINE) -> int:
    """Occurrences of `needle` in a peer's text output (read in blocks; a match may cross one)."""
    total, carry = 0, b""
    with path.open("rb") as text:
        while block := text.read(1 << 22):
            window = carry + block
            total += window.count(needle)
            carry = window[-(len(needle) - 1) :]
            total -= carry.count(needle)   # counted again in the next window
    return total
