"""The Rust ring consumer (ecapture._native.RingConsumer over native/src/ring.rs)
against a real BPF ring buffer map, fed by tests/bpf/ring_producer.bpf.c through
BPF_PROG_TEST_RUN while the consumer reads. Needs root and `make test-bpf`
(skips otherwise); the ring's own logic is also tested without root in ring.rs
(a memfd mapped as the kernel maps a ring)."""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Iterator

import pytest

from ecapture._native import RingConsumer

from .ring_producer import (
    BPF_RB_FORCE_WAKEUP,
    BPF_RB_NO_WAKEUP,
    PATTERN_SIZE,
    Producer,
    Shape,
    skip_reason,
)

RING = 1 << 16  # 64 KiB: records of up to 16 KiB wrap it every few records
DEADLINE_S = 60.0


@pytest.fixture
def producer() -> Iterator[Producer]:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    with Producer(RING) as producer:
        yield producer


class Feeder(threading.Thread):
    """Runs the producer until `total` records are in, retrying where the ring was full."""

    def __init__(self, producer: Producer, shape: Shape, total: int, batch: int) -> None:
        super().__init__(daemon=True)
        self.producer, self.shape, self.total, self.batch = producer, shape, total, batch
        self.produced = self.discarded = self.full_runs = 0
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while self.produced < self.total and not self.stop.is_set():
                run = self.producer.run(self.shape, self.produced,
                                        min(self.batch, self.total - self.produced))
                self.produced += run.produced
                self.discarded += run.discarded
                if run.full:
                    self.full_runs += 1
                    if not run.produced:
                        time.sleep(0.0001)
        except BaseException as error:
            self.error = error


@pytest.mark.parametrize(("shape", "total"), [
    # 1 B .. 16 KiB, the pattern shifted per record, a discarded record after every 7th
    (Shape(size_min=1, size_span=16384, stride=4099, discard_every=7), 6000),
    # small records, many to a page; every 3rd followed by a discarded one
    (Shape(size_min=1, size_span=64, stride=13, discard_every=3), 60_000),
], ids=["1B-16KiB", "1B-64B"])
def test_every_record_arrives_once_in_order_with_its_bytes(
    producer: Producer, shape: Shape, total: int
) -> None:
    pattern = os.urandom(PATTERN_SIZE)
    producer.set_pattern(pattern)
    with RingConsumer(producer.ring.fd, producer.ring.max_entries) as consumer:
        feeder = Feeder(producer, shape, total, batch=1024)
        feeder.start()
        received = 0
        mismatches: list[int] = []
        deadline = time.monotonic() + DEADLINE_S
        try:
            while received < total and time.monotonic() < deadline and feeder.error is None:
                for record in consumer.poll(5, max_records=256, max_bytes=32 << 10):
                    if record != shape.expected(pattern, received):
                        mismatches.append(received)
                    received += 1
        finally:
            feeder.stop.set()
            feeder.join(timeout=10)
        assert feeder.error is None
        assert not mismatches[:10]
        assert (received, feeder.produced) == (total, total)
        assert consumer.poll(0) == []
        consumer_pos, producer_pos = consumer.positions()
        assert consumer_pos == producer_pos and consumer.pending_bytes() == 0
    assert feeder.discarded > 0
    assert producer_pos > 50 * RING  # the ring wrapped many times over
    assert feeder.full_runs > 0  # and the producer met a full ring: the consumer held it back


def test_the_limits_of_a_poll_and_what_is_pending(producer: Producer) -> None:
    pattern = os.urandom(PATTERN_SIZE)
    producer.set_pattern(pattern)
    shape = Shape(size_min=100, stride=1)
    run = producer.run(shape, 0, 50)
    assert run.produced == 50
    with RingConsumer(producer.ring.fd, producer.ring.max_entries) as consumer:
        assert consumer.pending_bytes() == 50 * 112  # 8-byte header, 8-aligned
        records = consumer.poll(0, max_records=10)
        assert records == [shape.expected(pattern, seq) for seq in range(10)]
        assert consumer.pending_bytes() == 40 * 112
        records = consumer.poll(0, max_bytes=250)  # stops at the record that reaches it
        assert records == [shape.expected(pattern, seq) for seq in range(10, 13)]
        records = consumer.poll(0)
        assert records == [shape.expected(pattern, seq) for seq in range(13, 50)]
        assert consumer.pending_bytes() == 0


def test_it_takes_over_where_another_reader_stopped(producer: Producer) -> None:
    pattern = os.urandom(PATTERN_SIZE)
    producer.set_pattern(pattern)
    shape = Shape(size_min=1, size_span=2000, stride=7)
    produced = producer.fill(shape)
    reader = producer.loaded.ring_reader("ring", max_batch=produced // 2)
    first = reader.poll(0)
    with RingConsumer(producer.ring.fd, producer.ring.max_entries) as consumer:
        rest = consumer.poll(0, max_records=produced)
    assert first + rest == [shape.expected(pattern, seq) for seq in range(produced)]
    assert len(first) == produced // 2


def test_wait_times_out_wakes_up_and_lets_other_threads_run(producer: Producer) -> None:
    producer.set_pattern(bytes(PATTERN_SIZE))
    with RingConsumer(producer.ring.fd, producer.ring.max_entries) as consumer:
        ticks = 0
        running = True

        def tick() -> None:
            nonlocal ticks
            while running:
                ticks += 1

        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
        started = time.monotonic()
        try:
            assert consumer.wait(300) is False
            ticks_during_wait = ticks  # a wait holding the GIL would leave this near 0
        finally:
            running = False
            ticker.join(timeout=5)
        assert time.monotonic() - started >= 0.28
        assert ticks_during_wait > 10_000
        assert consumer.poll(50) == []

        # A producer without wake-ups: poll still finds the data (it is pending).
        producer.run(Shape(size_min=8, wakeup_flags=BPF_RB_NO_WAKEUP), 0, 3)
        assert len(consumer.poll(1000)) == 3

        def produce_later() -> None:
            time.sleep(0.1)
            producer.run(Shape(size_min=8, wakeup_flags=BPF_RB_FORCE_WAKEUP), 3, 1)

        later = threading.Thread(target=produce_later, daemon=True)
        started = time.monotonic()
        later.start()
        assert consumer.wait(5000) is True
        waited = time.monotonic() - started
        later.join(timeout=5)
        assert 0.05 < waited < 4
        assert len(consumer.poll(0)) == 1


def test_it_refuses_what_is_not_its_ring(producer: Producer) -> None:
    with pytest.raises(OSError, match="holds 65536 bytes, not 131072"):
        RingConsumer(producer.ring.fd, 2 * RING)
    pattern_map = producer.loaded.map("pattern")
    with pytest.raises(OSError, match="is a BPF map of type 2, not a ring buffer"):
        RingConsumer(pattern_map.fd, RING)
    consumer = RingConsumer(producer.ring.fd, RING)
    consumer.close()
    with pytest.raises(ValueError, match="closed"):
        consumer.poll(0)
    consumer.close()  # idempotent


def test_a_bad_fd_is_an_os_error() -> None:
    with pytest.raises(OSError) as raised:
        RingConsumer(-1, RING)
    assert raised.value.errno == errno.EBADF
    read, write = os.pipe()
    try:
        with pytest.raises(OSError):  # not a BPF map
            RingConsumer(read, RING)
    finally:
        os.close(read)
        os.close(write)
