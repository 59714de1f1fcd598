"""Packets decoded from struct tc_packet_event (bpf/events.h, bpf/tc.bpf.c).

tests/unit/test_packets.py checks the format against the BTF of tc.bpf.o.
"""

from __future__ import annotations

import struct

import msgspec

from ecapture.errors import DecodeError
from ecapture.events import Clock

RECORD_TC_PACKET = 57  # bpf/events.h
TC_INGRESS = 0
TC_EGRESS = 1
TC_PACKET_MAX = 65536
# kind, ifindex, timestamp_ns, socket_cookie, len, caplen, direction, _pad[7]; then data
TC_PACKET_HEADER = struct.Struct("<IIQQIIB7x")
TC_STAT_PACKETS = 0  # indexes of the per-CPU tc_stats array
TC_STAT_RING_FULL = 1
TC_STAT_RING_FULL_BYTES = 2
TC_STAT_LOAD_FAULTS = 3


class TcPacket(msgspec.Struct, frozen=True, gc=False):
    ifindex: int
    timestamp_ns: int  # CLOCK_MONOTONIC, or since the epoch (decoded with a clock)
    socket_cookie: int  # 0: no socket
    length: int  # on the wire
    direction: int  # TC_INGRESS / TC_EGRESS
    data: bytes  # the first caplen bytes


def decode_packet(record: bytes, clock: Clock | None = None) -> TcPacket:
    """One record; with a clock its time is made ns since the epoch."""
    if len(record) < TC_PACKET_HEADER.size:
        raise DecodeError(f"tc packet record of {len(record)} bytes is shorter than its header")
    kind, ifindex, timestamp_ns, cookie, length, caplen, direction = (
        TC_PACKET_HEADER.unpack_from(record)
    )
    if kind != RECORD_TC_PACKET:
        raise DecodeError(f"record kind {kind} is not a tc packet")
    end = TC_PACKET_HEADER.size + caplen
    if caplen > TC_PACKET_MAX or len(record) < end:
        raise DecodeError(f"tc packet record of {len(record)} bytes; caplen {caplen}")
    if clock is not None:
        timestamp_ns = clock.to_epoch(timestamp_ns)
    return TcPacket(ifindex, timestamp_ns, cookie, length, direction,
                    record[TC_PACKET_HEADER.size : end])
