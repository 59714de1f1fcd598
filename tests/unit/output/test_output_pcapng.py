"""The pcapng writer, read back by hand and by Wireshark's own tools (tshark, capinfos)."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from ecapture.output.pcapng import (
    DSB_TYPE,
    EPB_TYPE,
    IDB_TYPE,
    SECRETS_TLS_KEYLOG,
    SHB_TYPE,
    PcapngWriter,
    block,
)

REQUEST = b"GET /marker-4711 HTTP/1.1\r\nHost: example\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
KEY_LINE = "CLIENT_RANDOM " + "ab" * 32 + " " + "cd" * 48


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def frame(source_port: int, destination_port: int, seq: int, ack: int, payload: bytes, *,
          flags: int = 0x18) -> bytes:
    """Ethernet + IPv4 + TCP around `payload`, 127.0.0.1 both ends (RFC 791, RFC 9293)."""
    address = bytes([127, 0, 0, 1])
    tcp = struct.pack("!HHIIBBHHH", source_port, destination_port, seq, ack, 5 << 4, flags,
                      65535, 0, 0)
    pseudo = address + address + struct.pack("!BBH", 0, 6, len(tcp) + len(payload))
    tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp + payload)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), 1, 0, 64, 6, 0,
                     address, address)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return b"\0" * 12 + b"\x08\x00" + ip + tcp + payload


def exchange(path: Path, *, hold_ns: int = 0) -> PcapngWriter:
    writer = PcapngWriter(str(path), hold_ns=hold_ns)
    lo = writer.interface("lo")
    writer.write_secrets([KEY_LINE])
    request = frame(40000, 80, 1, 1, REQUEST)
    response = frame(80, 40000, 1, 1 + len(REQUEST), RESPONSE)
    writer.write_packet(lo, 1_000_000_000_123, request, len(request), "pid=42 comm=curl")
    writer.write_packet(lo, 1_000_000_500_000, response, len(response), "pid=7 comm=nginx")
    return writer


def blocks(data: bytes) -> list[tuple[int, bytes]]:
    found, at = [], 0
    while at < len(data):
        kind, total = struct.unpack_from("<II", data, at)
        assert total % 4 == 0 and struct.unpack_from("<I", data, at + total - 4)[0] == total
        found.append((kind, data[at + 8 : at + total - 4]))
        at += total
    return found


def tool(*argv: str | Path) -> str:
    if shutil.which(str(argv[0])) is None:
        pytest.skip(f"{argv[0]} is not installed (Debian package tshark)")
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_block_sequence_and_fields(tmp_path: Path) -> None:
    path = tmp_path / "x.pcapng"
    exchange(path).close()
    found = blocks(path.read_bytes())
    assert [kind for kind, _ in found] == [SHB_TYPE, IDB_TYPE, DSB_TYPE, EPB_TYPE, EPB_TYPE]
    shb = found[0][1]
    assert struct.unpack_from("<IHHq", shb) == (0x1A2B3C4D, 1, 0, -1)
    linktype, _, snaplen = struct.unpack_from("<HHI", found[1][1])
    assert (linktype, snaplen) == (1, 262144)
    secrets_type, length = struct.unpack_from("<II", found[2][1])
    assert secrets_type == SECRETS_TLS_KEYLOG
    assert found[2][1][8 : 8 + length] == (KEY_LINE + "\n").encode()
    interface, high, low, captured, original = struct.unpack_from("<IIIII", found[3][1])
    assert (interface, high << 32 | low) == (0, 1_000_000_000_123)
    assert captured == original == len(frame(40000, 80, 1, 1, REQUEST))


def test_block_bodies_must_be_aligned() -> None:
    with pytest.raises(ValueError, match="aligned"):
        block(EPB_TYPE, b"abc")


def test_tshark_reads_packets_comments_and_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "x.pcapng"
    exchange(path).close()
    summary = tool("tshark", "-r", path)
    assert "GET /marker-4711 HTTP/1.1" in summary
    assert "HTTP/1.1 200 OK" in summary
    fields = tool("tshark", "-r", path, "-T", "fields", "-e", "frame.comment",
                  "-e", "frame.time_epoch", "-e", "frame.cap_len")
    rows = [line.split("\t") for line in fields.splitlines()]
    assert [row[0] for row in rows] == ["pid=42 comm=curl", "pid=7 comm=nginx"]
    assert rows[0][1] == "1000.000000123"
    info = tool("capinfos", path)
    assert "Number of packets = 2" in info or "Number of packets:   2" in info
    assert "Number of decryption secrets in file: 1" in info
    assert "nanoseconds" in info


def test_each_secrets_call_is_one_block_counted_by_capinfos(tmp_path: Path) -> None:
    path = tmp_path / "x.pcapng"
    with exchange(path) as writer:
        writer.write_secrets(["SERVER_TRAFFIC_SECRET_0 " + "01" * 32 + " " + "02" * 32])
        writer.write_secrets([])  # nothing to write: no block
        assert writer.secrets_blocks == 2
    assert "Number of decryption secrets in file: 2" in tool("capinfos", path)


def test_held_packets_come_after_a_late_secret(tmp_path: Path) -> None:
    path = tmp_path / "x.pcapng"
    with exchange(path, hold_ns=1_000_000) as writer:
        writer.release(1_000_000_900_000)  # the first packet is 0.9 ms old: still held
        late = "CLIENT_TRAFFIC_SECRET_0 " + "03" * 32 + " " + "04" * 32
        writer.write_secrets([late])
        writer.release(1_000_001_200_000)  # first due, second (0.7 ms old) held
        kinds = [kind for kind, _ in blocks(path.read_bytes())]
        assert kinds == [SHB_TYPE, IDB_TYPE, DSB_TYPE, DSB_TYPE, EPB_TYPE]
    kinds = [kind for kind, _ in blocks(path.read_bytes())]
    assert kinds == [SHB_TYPE, IDB_TYPE, DSB_TYPE, DSB_TYPE, EPB_TYPE, EPB_TYPE]


def test_a_callable_comment_is_made_when_the_packet_is_written(tmp_path: Path) -> None:
    path = tmp_path / "x.pcapng"
    owner: list[str] = []
    with PcapngWriter(str(path), hold_ns=10) as writer:
        lo = writer.interface("lo")
        request = frame(40000, 80, 1, 1, REQUEST)
        writer.write_packet(lo, 100, request, len(request), lambda: owner[0] if owner else None)
        owner.append("pid=42 comm=curl")  # learnt while the packet was held
    fields = tool("tshark", "-r", path, "-T", "fields", "-e", "frame.comment")
    assert fields.strip() == "pid=42 comm=curl"


def test_interfaces_get_ids_in_order_and_unknown_ids_are_refused(tmp_path: Path) -> None:
    with PcapngWriter(str(tmp_path / "x.pcapng")) as writer:
        assert writer.interface("lo") == 0
        assert writer.interface("eth0", linktype=113, snaplen=96) == 1
        assert writer.interface("lo") == 0
        with pytest.raises(ValueError, match="no IDB"):
            writer.write_packet(2, 0, b"x", 1)
    found = blocks((tmp_path / "x.pcapng").read_bytes())
    assert [kind for kind, _ in found] == [SHB_TYPE, IDB_TYPE, IDB_TYPE]
    assert struct.unpack_from("<HHI", found[2][1]) == (113, 0, 96)
