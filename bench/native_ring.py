"""Reading + decoding a real ring: the Rust consumer against the Python reader.

`sudo .venv/bin/python -m bench.native_ring [--rounds N] [--ring-mib M]` (needs root
and `make test-bpf`). Each round fills a ring buffer map with tls_data_event records
(tests/bpf/ring_producer.bpf.c, through BPF_PROG_TEST_RUN) until it is full, then
times one reader draining it, the readers interleaved round by round:

- python: RingReader.poll (libbpf, a ctypes callback per record) + events.decode_record
- python-read: RingReader.poll only
- rust-poll+python-decode: RingConsumer.poll (records as bytes) + events.decode_record
- rust-poll: RingConsumer.poll only
- rust: RingConsumer.consume_decoded (consume + record.rs decode, no Python object per record;
  the payload stays in the ring's pages, unread)
- rust+read-payload: the same, reading every payload byte once (what a later stage costs at least)

Figures are records/s and GB/s of record bytes, and each reader's ratio to `python`
in the same run; the load average is printed beside them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.unit.native.ring_producer import PATTERN_SIZE, Producer, Shape, skip_reason

from ecapture._native import RingConsumer
from ecapture.bpf.readers import RingReader
from ecapture.events import (
    DATA_FLAG_LAST_CHUNK,
    RECORD_HEADER,
    SOCK_ADDR,
    TLS_DATA_FIELDS,
    TLS_DATA_HEADER_SIZE,
    Clock,
    decode_record,
)

CALL_ID_OFFSET = RECORD_HEADER.size + 8  # where the producer stamps each record's seq


def template(payload: int) -> bytes:
    """One tls_data_event with `payload` bytes, padded to the pattern map's size."""
    header = RECORD_HEADER.pack(1, 4242, 4243, 1000, 123_456_789, 17, 0x55AA0011, 77,
                                b"nginx")
    local = SOCK_ADDR.pack(2, 443, bytes([127, 0, 0, 1]) + bytes(12))
    remote = SOCK_ADDR.pack(2, 50_000, bytes([127, 0, 0, 1]) + bytes(12))
    fields = TLS_DATA_FIELDS.pack(9, 1, DATA_FLAG_LAST_CHUNK, 0, payload, 0, payload, 0, 0,
                                  local, remote)
    body = bytes(range(256)) * (payload // 256 + 1)
    record = header + fields + body[:payload]
    return record.ljust(PATTERN_SIZE, b"\0")


def drain_python(reader: RingReader, _consumer: RingConsumer) -> tuple[int, int]:
    clock = Clock(0)
    records = size = 0
    while batch := reader.poll(0):
        for raw in batch:
            decode_record(raw, clock)
            size += len(raw)
        records += len(batch)
    return records, size


def drain_python_read(reader: RingReader, _consumer: RingConsumer) -> tuple[int, int]:
    records = size = 0
    while batch := reader.poll(0):
        records += len(batch)
        size += sum(map(len, batch))
    return records, size


def drain_rust_poll_python_decode(_reader: RingReader, consumer: RingConsumer
                                  ) -> tuple[int, int]:
    clock = Clock(0)
    records = total = 0
    while batch := consumer.poll(0):
        for raw in batch:
            decode_record(raw, clock)
            total += len(raw)
        records += len(batch)
    return records, total


def drain_rust_poll(_reader: RingReader, consumer: RingConsumer) -> tuple[int, int]:
    records = total = 0
    while batch := consumer.poll(0):
        records += len(batch)
        total += sum(map(len, batch))
    return records, total


def drain_rust(_reader: RingReader, consumer: RingConsumer, *, read_payload: bool = False
               ) -> tuple[int, int]:
    records = total = 0
    while True:
        count, nbytes, _payload, errors, _sum = consumer.consume_decoded(
            0, read_payload=read_payload)
        if errors:
            raise RuntimeError(f"{errors} records did not decode")
        if not count:
            return records, total
        records += count
        total += nbytes


def drain_rust_read_payload(reader: RingReader, consumer: RingConsumer) -> tuple[int, int]:
    return drain_rust(reader, consumer, read_payload=True)


READERS: dict[str, Callable[[RingReader, RingConsumer], tuple[int, int]]] = {
    "python": drain_python,
    "python-read": drain_python_read,
    "rust-poll+python-decode": drain_rust_poll_python_decode,
    "rust-poll": drain_rust_poll,
    "rust": drain_rust,
    "rust+read-payload": drain_rust_read_payload,
}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.native_ring", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ring-mib", type=int, default=64)
    arguments = parser.parse_args(argv)
    reason = skip_reason()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 1
    ring_bytes = arguments.ring_mib << 20
    print(f"load average {os.getloadavg()[0]:.2f}; ring {arguments.ring_mib} MiB; "
          f"{arguments.rounds} rounds, readers interleaved")
    with Producer(ring_bytes) as producer:
        # Both readers map the ring once, and take turns (each starts at the
        # consumer position the other left).
        reader = producer.loaded.ring_reader("ring")
        consumer = RingConsumer(producer.ring.fd, ring_bytes)
        for payload in (64, 16384):
            producer.set_pattern(template(payload))
            shape = Shape(size_min=TLS_DATA_HEADER_SIZE + payload, stamp_at=CALL_ID_OFFSET)
            seconds: dict[str, list[float]] = {name: [] for name in READERS}
            volume: dict[str, tuple[int, int]] = {}
            for round_index in range(arguments.rounds):
                names = list(READERS)
                names = names[round_index % len(names):] + names[:round_index % len(names)]
                for name in names:
                    filled = producer.fill(shape)
                    started = time.perf_counter()
                    records, nbytes = READERS[name](reader, consumer)
                    seconds[name].append(time.perf_counter() - started)
                    if records != filled:
                        raise RuntimeError(f"{name} read {records} of {filled} records")
                    volume[name] = (records, nbytes)
            print(f"\n{payload} B payload ({TLS_DATA_HEADER_SIZE + payload} B records), "
                  f"load average {os.getloadavg()[0]:.2f}")
            print(f"  {'reader':<26}{'records/s':>12}{'GB/s':>8}{'ns/record':>11}{'vs python':>11}")
            base = statistics.median(seconds["python"])
            for name in READERS:
                records, nbytes = volume[name]
                median = statistics.median(seconds[name])
                print(f"  {name:<26}{records / median:>12,.0f}{nbytes / median / 1e9:>8.2f}"
                      f"{median / records * 1e9:>11.0f}{base / median:>10.1f}x")
        consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
