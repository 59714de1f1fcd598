"""A pcapng writer with Decryption Secrets Blocks, so `tshark -r FILE` decrypts on its own.

Block layouts: draft-ietf-opsawg-pcapng (PCAP Next Generation Dump File
Format), sections 4.1 Section Header Block, 4.2 Interface Description Block,
4.3 Enhanced Packet Block, 4.7 Decryption Secrets Block; options in 3.5.
Little-endian throughout (the SHB's byte-order magic says so). No Python
library writes a DSB, hence this one.

Wireshark applies a DSB's secrets to the packets that follow it in the file
(a one-pass read decrypts nothing before it), so packets can be held for a
short window (`hold_ns`): a secret that arrives inside the window is written
before them. Packets leave the window in the order they were added.
"""

from __future__ import annotations

import os
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ecapture.files import open_private_file
from ecapture.output.sinks import write_all

SHB_TYPE = 0x0A0D0D0A
IDB_TYPE = 0x00000001
EPB_TYPE = 0x00000006
DSB_TYPE = 0x0000000A
BYTE_ORDER_MAGIC = 0x1A2B3C4D
SECRETS_TLS_KEYLOG = 0x544C534B  # "TLSK": NSS key log lines
OPT_ENDOFOPT = 0
OPT_COMMENT = 1
SHB_USERAPPL = 4
IF_NAME = 2
IF_TSRESOL = 9
TSRESOL_NANOSECONDS = 9  # 10^-9 s per timestamp unit
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
DEFAULT_SNAPLEN = 262144  # tcpdump's default (MAXIMUM_SNAPLEN of libpcap)
APPLICATION = "ecapture"


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def option(code: int, value: bytes) -> bytes:
    """One option: code, length, value padded to 32 bits (section 3.5)."""
    return struct.pack("<HH", code, len(value)) + _pad(value)


def _options(*pairs: tuple[int, bytes]) -> bytes:
    if not pairs:
        return b""
    return b"".join(option(code, value) for code, value in pairs) + option(OPT_ENDOFOPT, b"")


def block(block_type: int, body: bytes) -> bytes:
    """Type, total length, body (already 32-bit aligned), total length again."""
    if len(body) % 4:
        raise ValueError("a pcapng block body must be 32-bit aligned")
    total = len(body) + 12
    return struct.pack("<II", block_type, total) + body + struct.pack("<I", total)


def section_header() -> bytes:
    body = struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1)  # length -1: not given
    return block(SHB_TYPE, body + _options((SHB_USERAPPL, APPLICATION.encode())))


def interface_description(name: str, linktype: int, snaplen: int) -> bytes:
    body = struct.pack("<HHI", linktype, 0, snaplen)
    options = _options((IF_NAME, name.encode()), (IF_TSRESOL, bytes([TSRESOL_NANOSECONDS])))
    return block(IDB_TYPE, body + options)


def enhanced_packet(
    interface: int, timestamp_ns: int, data: bytes, original_length: int,
    comment: str | None = None,
) -> bytes:
    body = struct.pack(
        "<IIIII", interface, timestamp_ns >> 32, timestamp_ns & 0xFFFFFFFF, len(data),
        original_length,
    )
    options = _options((OPT_COMMENT, comment.encode())) if comment else b""
    return block(EPB_TYPE, body + _pad(data) + options)


def decryption_secrets(keylog: bytes) -> bytes:
    body = struct.pack("<II", SECRETS_TLS_KEYLOG, len(keylog)) + _pad(keylog)
    return block(DSB_TYPE, body)


# A packet's comment, or how to make it when the packet is written (the process
# of a packet may become known while the packet is held).
Comment = str | Callable[[], str | None] | None


@dataclass(frozen=True, slots=True)
class _Held:
    interface: int
    timestamp_ns: int
    data: bytes
    original_length: int
    comment: Comment

    def encode(self) -> bytes:
        comment = self.comment() if callable(self.comment) else self.comment
        return enhanced_packet(
            self.interface, self.timestamp_ns, self.data, self.original_length, comment
        )


class PcapngWriter:
    """One section, interfaces added as they are met, packets and secrets as they come."""

    def __init__(self, path: str, *, hold_ns: int = 0, flag: str = "--pcapfile") -> None:
        self.path = path
        self.hold_ns = hold_ns
        self._fd: int | None = open_private_file(path, flag)
        self._interfaces: dict[str, int] = {}
        self._held: deque[_Held] = deque()
        self.packets = 0
        self.secrets_blocks = 0
        self._write(section_header())

    def _write(self, data: bytes) -> None:
        if self._fd is None:
            raise ValueError(f"pcapng file {self.path} is closed")
        write_all(self._fd, data)

    def interface(self, name: str, *, linktype: int = LINKTYPE_ETHERNET,
                  snaplen: int = DEFAULT_SNAPLEN) -> int:
        """The id of interface `name`, its IDB written the first time."""
        known = self._interfaces.get(name)
        if known is not None:
            return known
        self._write(interface_description(name, linktype, snaplen))
        self._interfaces[name] = len(self._interfaces)
        return self._interfaces[name]

    def write_secrets(self, lines: list[str]) -> None:
        """A DSB with these NSS key log lines, ahead of every packet still held."""
        if lines:
            self._write(decryption_secrets("".join(f"{line}\n" for line in lines).encode()))
            self.secrets_blocks += 1

    def write_packet(
        self, interface: int, timestamp_ns: int, data: bytes, original_length: int,
        comment: Comment = None,
    ) -> None:
        """Add one packet; it is written once `hold_ns` of newer time has passed. A
        callable comment is called then."""
        if not 0 <= interface < len(self._interfaces):
            raise ValueError(f"interface {interface} has no IDB")
        held = _Held(interface, timestamp_ns, data, original_length, comment)
        self.packets += 1
        if self.hold_ns <= 0:
            self._write(held.encode())
            return
        self._held.append(held)

    def release(self, now_ns: int) -> None:
        """Write the held packets captured at or before now_ns - hold_ns."""
        due = now_ns - self.hold_ns
        out = []
        while self._held and self._held[0].timestamp_ns <= due:
            out.append(self._held.popleft().encode())
        if out:
            self._write(b"".join(out))

    def flush(self) -> None:
        """Write every held packet."""
        if self._held:
            self._write(b"".join(held.encode() for held in self._held))
            self._held.clear()

    def close(self) -> None:
        if self._fd is not None:
            self.flush()
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> PcapngWriter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
