"""The records of `ecapture tls -m keylog` and `-m pcap`: secrets and packets → items.

Sans-IO. A secret goes on once (the same label and client random come again
when the peer in the same capture derives it too, or the library logs it
twice); a secret the kernel could not copy whole becomes a `Lost` item, never a
key. A packet goes on unless the filter leaves it out or it is loopback's
second copy (on `lo` each packet crosses egress, then ingress: the egress copy,
which carries the sender's socket cookie, is kept). Elsewhere a received packet
has no socket yet when TC sees it (the stack finds it later, ip_rcv_finish's
early demux): it gets the cookie of the socket that sent the same flow's
packets the other way, learnt from its TCP/UDP 5-tuple. The kernel's counters
(ring full, copy faults) become `Lost` items as they grow, once a second and at
the end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import msgspec

from ecapture.events import LossReason, Lost
from ecapture.packets import TC_INGRESS, TcPacket
from ecapture.secrets import KeylogFailure, KeylogSecret

log = logging.getLogger(__name__)

# Secrets remembered for de-duplication; beyond this the oldest half is
# forgotten (a repeat of a forgotten one is then written twice: harmless).
MAX_REMEMBERED_SECRETS = 1 << 20
MAX_LOGGED_FAILURES = 5
MAX_FLOWS = 65536  # 5-tuples remembered for received packets (tc.bpf.c sock_owners' size)
ETHERTYPE_VLAN = 0x8100
ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
TRANSPORTS = (6, 17)  # TCP, UDP: ports in the first 4 bytes
FlowKey = tuple[bytes, bytes, bytes]  # source address, destination address, ports + protocol


def flow_of(frame: bytes, *, raw_ip: bool = False) -> FlowKey | None:
    """(source, destination, ports and protocol) of a TCP/UDP packet, None otherwise.
    Layouts: IEEE 802.3 (and 802.1Q), RFC 791, RFC 8200 (no extension headers)."""
    at = 0
    if not raw_ip:
        if len(frame) < 14:
            return None
        ethertype = int.from_bytes(frame[12:14], "big")
        at = 14
        if ethertype == ETHERTYPE_VLAN and len(frame) >= 18:
            ethertype, at = int.from_bytes(frame[16:18], "big"), 18
    elif frame:
        ethertype = ETHERTYPE_IPV4 if frame[0] >> 4 == 4 else ETHERTYPE_IPV6
    else:
        return None
    if ethertype == ETHERTYPE_IPV4 and len(frame) >= at + 20:
        header, protocol = (frame[at] & 0x0F) * 4, frame[at + 9]
        source, destination = frame[at + 12:at + 16], frame[at + 16:at + 20]
    elif ethertype == ETHERTYPE_IPV6 and len(frame) >= at + 40:
        header, protocol = 40, frame[at + 6]
        source, destination = frame[at + 8:at + 24], frame[at + 24:at + 40]
    else:
        return None
    ports = frame[at + header:at + header + 4]
    if protocol not in TRANSPORTS or len(ports) < 4:
        return None
    return (source, destination, ports + bytes([protocol]))


def _reverse(flow: FlowKey) -> FlowKey:
    source, destination, ports = flow
    return (destination, source, ports[2:4] + ports[0:2] + ports[4:])


class Matcher(Protocol):
    """What a packet filter offers (ecapture.pcap_filter.PacketFilter)."""

    def matches(self, frame: bytes, length: int) -> bool: ...


@dataclass(frozen=True, slots=True)
class KernelCounter:
    """A kernel counter of losses: its name in the counters mapping, and what it means."""

    records: str  # counter of lost records
    reason: LossReason
    what: str  # "secrets", "packets"...
    nbytes: str | None = None  # counter of their bytes, if any


# The counters bpf/keylog.bpf.c and bpf/tc.bpf.c keep (names given by the module).
KEYS_RING_FULL = KernelCounter("keys_ring_full", LossReason.RING_FULL,
                               "secrets lost: the keys ring was full")
PACKETS_RING_FULL = KernelCounter("packets_ring_full", LossReason.RING_FULL,
                                  "packets lost: the packets ring was full (raise --mapsize)",
                                  "packets_ring_full_bytes")
PACKET_FAULTS = KernelCounter("packet_faults", LossReason.READ_FAULT,
                              "packets lost: the kernel could not copy them")


@dataclass(slots=True)
class KeysCounters:
    secrets: int = 0
    repeated: int = 0
    failed: int = 0
    packets: int = 0
    filtered: int = 0
    loopback_copies: int = 0
    cut: int = 0


class TlsKeysProcessor:
    """Secrets and packets in; the items to write out (secrets, packets, `Lost`)."""

    def __init__(
        self, *, packet_filter: Matcher | None = None, loopback: bool = False,
        snaplen: int = 0, kernel_counters: Callable[[], Mapping[str, int]] | None = None,
        watched: Sequence[KernelCounter] = (), raw_ip: bool = False,
    ) -> None:
        self.raw_ip = raw_ip  # the interface has no MAC header (LINKTYPE_RAW)
        self._flows: dict[FlowKey, int] = {}  # sent 5-tuple -> the sender's socket cookie
        self.packet_filter = packet_filter
        self.loopback = loopback
        self.snaplen = snaplen  # 0: no snap length of ours (nothing counted as cut)
        self.kernel_counters = kernel_counters
        self.watched = tuple(watched)
        self.counters = KeysCounters()
        self._seen: dict[tuple[str, bytes], None] = {}
        self._reported: dict[str, int] = {}

    def feed(self, record: object) -> Sequence[object]:
        if type(record) is TcPacket:
            return self._packet(record)
        if type(record) is KeylogSecret:
            return self._secret(record)
        if type(record) is KeylogFailure:
            return self._failure(record)
        raise TypeError(f"not a secret or a packet: {type(record).__name__}")

    def _secret(self, secret: KeylogSecret) -> Sequence[object]:
        key = (secret.label, secret.client_random)
        if key in self._seen:
            self.counters.repeated += 1
            return ()
        self._seen[key] = None
        if len(self._seen) > MAX_REMEMBERED_SECRETS:
            for old in list(self._seen)[: MAX_REMEMBERED_SECRETS // 2]:
                del self._seen[old]
        self.counters.secrets += 1
        return (secret,)

    def _failure(self, failure: KeylogFailure) -> Sequence[object]:
        self.counters.failed += 1
        if self.counters.failed <= MAX_LOGGED_FAILURES:
            log.warning("a %s secret of pid %d (%s) was not written: %s", failure.label or "?",
                        failure.pid, failure.comm, failure.reason)
        faulted = "faulted" in failure.reason or not failure.label
        reason = LossReason.READ_FAULT if faulted else LossReason.KERNEL_LIMIT
        return (Lost(time.time_ns(), reason, 1, 0, pid=failure.pid, comm=failure.comm),)

    def _packet(self, packet: TcPacket) -> Sequence[object]:
        if self.loopback and packet.direction == TC_INGRESS:
            self.counters.loopback_copies += 1
            return ()
        data = packet.data
        if self.packet_filter is not None and not self.packet_filter.matches(data, packet.length):
            self.counters.filtered += 1
            return ()
        self.counters.packets += 1
        if not self.loopback:
            packet = self._attributed(packet)
        wanted = packet.length if not self.snaplen else min(packet.length, self.snaplen)
        if len(data) < wanted:  # the kernel's record limit (TC_PACKET_MAX) cut it
            self.counters.cut += 1
            return (packet, Lost(packet.timestamp_ns, LossReason.KERNEL_LIMIT, 0,
                                 wanted - len(data)))
        return (packet,)

    def _attributed(self, packet: TcPacket) -> TcPacket:
        """Learn a sent packet's flow; give a received one without a socket the cookie
        of its flow's sender."""
        if packet.socket_cookie == 0 and packet.direction != TC_INGRESS:
            return packet
        flow = flow_of(packet.data, raw_ip=self.raw_ip)
        if flow is None:
            return packet
        if packet.socket_cookie:
            if packet.direction != TC_INGRESS:
                if len(self._flows) >= MAX_FLOWS and flow not in self._flows:
                    self._flows.clear()
                self._flows[flow] = packet.socket_cookie
            return packet
        cookie = self._flows.get(_reverse(flow))
        return packet if cookie is None else msgspec.structs.replace(packet, socket_cookie=cookie)

    def expire(self, now_ns: int) -> Sequence[object]:
        return self._kernel_losses(now_ns)

    def flush(self) -> Sequence[object]:
        return self._kernel_losses(time.time_ns())

    def _kernel_losses(self, now_ns: int) -> list[object]:
        """A `Lost` for each watched counter that grew since the last call."""
        if self.kernel_counters is None or not self.watched:
            return []
        current = self.kernel_counters()
        items: list[object] = []
        for counter in self.watched:
            grown = current.get(counter.records, 0) - self._reported.get(counter.records, 0)
            if grown <= 0:
                continue
            nbytes = 0
            if counter.nbytes is not None:
                nbytes = current.get(counter.nbytes, 0) - self._reported.get(counter.nbytes, 0)
                self._reported[counter.nbytes] = current.get(counter.nbytes, 0)
            self._reported[counter.records] = current.get(counter.records, 0)
            log.warning("%d %s", grown, counter.what, extra={"count": grown})
            items.append(Lost(now_ns, counter.reason, grown, max(nbytes, 0)))
        return items
