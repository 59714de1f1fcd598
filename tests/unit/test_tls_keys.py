"""-m keylog / -m pcap without the kernel: the processor, the file writers, the renderers."""

from __future__ import annotations

import io
import json
import struct
import time
from pathlib import Path

import pytest

from ecapture.errors import SinkError
from ecapture.events import LossReason, Lost
from ecapture.modules.tls_modes import KeylogFileWriter, PcapngFileWriter
from ecapture.output.jsonl import JsonLinesWriter
from ecapture.output.pcapng import DSB_TYPE, EPB_TYPE, LINKTYPE_ETHERNET
from ecapture.output.text import TextWriter
from ecapture.packets import TC_EGRESS, TC_INGRESS, TcPacket
from ecapture.pipeline import Pipeline
from ecapture.processor.tls_keys import (
    KEYS_RING_FULL,
    PACKET_FAULTS,
    PACKETS_RING_FULL,
    TlsKeysProcessor,
)
from ecapture.secrets import KeylogFailure, KeylogSecret


def secret(label: str = "CLIENT_RANDOM", random: bytes = b"\x01" * 32,
           comm: str = "curl") -> KeylogSecret:
    return KeylogSecret(label, random, b"\x02" * 48, 7, 8, 0, comm, 1_000, 0x55)


def packet(data: bytes = b"\x00" * 60, *, direction: int = TC_EGRESS, length: int | None = None,
           cookie: int = 9, timestamp_ns: int = 1_000) -> TcPacket:
    return TcPacket(1, timestamp_ns, cookie, len(data) if length is None else length,
                    direction, data)


class PortFilter:
    """Stands in for a compiled filter: keeps frames whose first byte is 1."""

    def matches(self, frame: bytes, length: int) -> bool:
        return frame[:1] == b"\x01"


def test_a_secret_goes_on_once_whoever_derives_it() -> None:
    processor = TlsKeysProcessor()
    first = secret()
    assert processor.feed(first) == (first,)
    assert processor.feed(secret(comm="nginx")) == ()  # the server derives the same one
    other = secret("SERVER_TRAFFIC_SECRET_0")
    assert processor.feed(other) == (other,)
    assert (processor.counters.secrets, processor.counters.repeated) == (2, 1)


def test_a_secret_not_copied_whole_is_a_loss_never_a_key() -> None:
    processor = TlsKeysProcessor()
    faulted = processor.feed(KeylogFailure("reading the library's memory faulted",
                                           "CLIENT_RANDOM", 7, "curl", 0x55))
    long = processor.feed(KeylogFailure("secret of 80 bytes > 64", "EXPORTER_SECRET", 7,
                                        "curl", 0x55))
    assert [(item.reason, item.records, item.pid) for item in (*faulted, *long)
            if isinstance(item, Lost)] == [(LossReason.READ_FAULT, 1, 7),
                                           (LossReason.KERNEL_LIMIT, 1, 7)]
    assert not any(isinstance(item, KeylogSecret) for item in (*faulted, *long))
    assert processor.counters.failed == 2


def test_loopback_keeps_the_egress_copy_and_the_filter_leaves_out() -> None:
    processor = TlsKeysProcessor(packet_filter=PortFilter(), loopback=True)
    kept = packet(b"\x01" + b"\x00" * 59)
    assert processor.feed(kept) == (kept,)
    assert processor.feed(packet(b"\x01" + b"\x00" * 59, direction=TC_INGRESS)) == ()
    assert processor.feed(packet(b"\x02" + b"\x00" * 59)) == ()
    counts = processor.counters
    assert (counts.packets, counts.loopback_copies, counts.filtered) == (1, 1, 1)
    # not loopback: both directions are packets of their own
    both = TlsKeysProcessor()
    assert len(both.feed(packet(direction=TC_INGRESS))) == 1


def test_a_packet_the_kernel_cut_below_the_snap_length_is_counted() -> None:
    processor = TlsKeysProcessor(snaplen=262144)
    items = processor.feed(packet(b"\x00" * 100, length=70000))
    assert items[0] == packet(b"\x00" * 100, length=70000)
    assert items[1] == Lost(1_000, LossReason.KERNEL_LIMIT, 0, 70000 - 100)
    short = TlsKeysProcessor(snaplen=64)  # cut as asked: no loss
    assert len(short.feed(packet(b"\x00" * 64, length=1500))) == 1


def test_kernel_counters_become_losses_as_they_grow() -> None:
    counters = {"keys_ring_full": 0, "packets_ring_full": 0, "packets_ring_full_bytes": 0,
                "packet_faults": 0}
    processor = TlsKeysProcessor(kernel_counters=lambda: counters,
                                 watched=(KEYS_RING_FULL, PACKETS_RING_FULL, PACKET_FAULTS))
    assert processor.expire(5) == []
    counters.update(keys_ring_full=2, packets_ring_full=3, packets_ring_full_bytes=4500)
    assert processor.expire(6) == [Lost(6, LossReason.RING_FULL, 2, 0),
                                   Lost(6, LossReason.RING_FULL, 3, 4500)]
    assert processor.expire(7) == []  # reported once
    counters.update(packets_ring_full=4, packets_ring_full_bytes=5000, packet_faults=1)
    final = processor.flush()
    assert [(item.reason, item.records, item.bytes) for item in final
            if isinstance(item, Lost)] == [(LossReason.RING_FULL, 1, 500),
                                           (LossReason.READ_FAULT, 1, 0)]


def test_losses_reach_the_pipeline_counters_and_the_event_stream() -> None:
    counters = {"keys_ring_full": 1}
    sink = io.BytesIO()

    class Sink:
        def write(self, data: bytes) -> None:
            sink.write(data)

        def flush(self) -> None: ...

        def close(self) -> None: ...

    pipeline = Pipeline([JsonLinesWriter("tls", Sink())], processor=TlsKeysProcessor(
        kernel_counters=lambda: counters, watched=(KEYS_RING_FULL,)))
    pipeline.tick(10)
    pipeline.finish()
    assert pipeline.counters.lost[LossReason.RING_FULL].records == 1
    events = [json.loads(line) for line in sink.getvalue().splitlines()]
    assert [(e["type"], e["reason"], e["records"]) for e in events] == [
        ("lost", "ring_full", 1)]


def blocks(path: Path) -> list[tuple[int, bytes]]:
    data = path.read_bytes()
    found, at = [], 0
    while at < len(data):
        kind, total = struct.unpack_from("<II", data, at)
        found.append((kind, data[at + 8:at + total - 4]))
        at += total
    return found


def test_the_pcapng_writer_puts_a_late_secret_before_the_held_packets(tmp_path: Path) -> None:
    path = tmp_path / "out.pcapng"
    owners = {9: "pid 7 tid 8 comm curl"}
    writer = PcapngFileWriter(str(path), "lo", LINKTYPE_ETHERNET, 262144, owners.get)
    now = time.time_ns()
    writer.write(packet(timestamp_ns=now))
    writer.write(packet(cookie=10, timestamp_ns=now + 1))  # owner not known yet
    owners[10] = "pid 9 tid 9 comm nginx"
    writer.write(secret())  # arrives after the packets: written before them
    writer.flush()  # the packets are younger than the hold window: still held
    assert [kind for kind, _ in blocks(path)][2:] == [DSB_TYPE]
    writer.close()
    kinds = [kind for kind, _ in blocks(path)]
    assert kinds[2:] == [DSB_TYPE, EPB_TYPE, EPB_TYPE]
    bodies = [body for kind, body in blocks(path) if kind == EPB_TYPE]
    assert b"comm curl" in bodies[0] and b"comm nginx" in bodies[1]
    assert writer.secrets_blocks == 1 and writer.packets == 2


def test_a_failed_file_write_stops_the_capture(tmp_path: Path) -> None:
    keylog = KeylogFileWriter(str(tmp_path / "k.log"))
    keylog._writer._fd = -1  # every write now fails (EBADF), as on a full disk
    with pytest.raises(SinkError, match="key log"):
        keylog.write(secret())
    pcap = PcapngFileWriter(str(tmp_path / "p.pcapng"), "lo", LINKTYPE_ETHERNET, 262144,
                            lambda cookie: None)
    pcap._writer._fd = -1
    with pytest.raises(SinkError, match="pcapng file"):
        pcap.write(secret())


def test_the_event_stream_names_a_secret_but_never_shows_it() -> None:
    out = io.BytesIO()

    class Sink:
        def write(self, data: bytes) -> None:
            out.write(data)

        def flush(self) -> None: ...

        def close(self) -> None: ...

    for writer in (JsonLinesWriter("tls", Sink()), TextWriter("tls", Sink(), color=False)):
        writer.write(secret())
        writer.write(packet())  # packets go to the pcapng file only
        writer.flush()
    text = out.getvalue().decode()
    assert ("01" * 32) in text and ("02" * 48) not in text
    lines = text.splitlines()
    event = json.loads(lines[0])
    assert event["type"] == "secret" and event["label"] == "CLIENT_RANDOM"
    assert event["comm"] == "curl" and event["pid"] == 7
    assert len(lines) == 2 and "secret CLIENT_RANDOM" in lines[1]


def ipv4_tcp(source: str, destination: str, sport: int, dport: int, *,
             ethernet: bool = True) -> bytes:
    import ipaddress

    ip = (bytes([0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0])
          + ipaddress.ip_address(source).packed + ipaddress.ip_address(destination).packed)
    tcp = struct.pack(">HH", sport, dport) + b"\x00" * 16
    frame = ip + tcp
    return (b"\x00" * 12 + b"\x08\x00" + frame) if ethernet else frame


@pytest.mark.parametrize("ethernet", [True, False])
def test_a_received_packet_is_named_after_the_sender_of_its_flow(ethernet: bool) -> None:
    """Off loopback an ingress packet has no socket at TC: the reply direction of a flow a
    socket sent on gets that socket's cookie; another flow stays unknown."""
    processor = TlsKeysProcessor(raw_ip=not ethernet)
    sent = packet(ipv4_tcp("10.0.0.1", "10.0.0.2", 40000, 443, ethernet=ethernet), cookie=77)
    assert processor.feed(sent) == (sent,)
    reply = packet(ipv4_tcp("10.0.0.2", "10.0.0.1", 443, 40000, ethernet=ethernet),
                   direction=TC_INGRESS, cookie=0)
    (named,) = processor.feed(reply)
    assert isinstance(named, TcPacket) and named.socket_cookie == 77
    stranger = packet(ipv4_tcp("10.0.0.3", "10.0.0.1", 443, 40000, ethernet=ethernet),
                      direction=TC_INGRESS, cookie=0)
    assert processor.feed(stranger) == (stranger,)
    # on loopback the ingress copy is dropped, never renamed
    assert TlsKeysProcessor(loopback=True).feed(reply) == ()
