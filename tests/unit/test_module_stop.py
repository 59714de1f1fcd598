"""Stopping a module: the bounded drain, a second stop, a failed sink (no root).

The BPF side is replaced by fakes that keep the base class's contract: the
reader hands out queued raw records, the loaded object has a stats map, and
the ring's backlog is either read by consuming (no positions) or given.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import pytest

from ecapture.bpf.ringpos import Backlog
from ecapture.config import GlobalConfig
from ecapture.errors import BpfError, SinkError
from ecapture.events import (
    TLS_DATA_HEADER_SIZE,
    Clock,
    Direction,
    Endpoint,
    LossReason,
    Lost,
    Record,
    TlsData,
)
from ecapture.modules import base
from ecapture.modules.base import Module, ModuleState, ProbeSpec, Stat
from ecapture.output.base import CutCount, OutputItem
from ecapture.output.jsonl import JsonLinesWriter
from ecapture.output.sinks import FdSink
from ecapture.pipeline import Pipeline

PAYLOAD = b"x" * 100


def raw_record(index: int) -> bytes:
    """A record as the ring holds it: a struct header, then the payload."""
    return struct.pack("<Q", index).ljust(TLS_DATA_HEADER_SIZE, b"\0") + PAYLOAD


def decode(raw: bytes, clock: Clock) -> Record:
    index = struct.unpack_from("<Q", raw)[0]
    data = raw[TLS_DATA_HEADER_SIZE:]
    endpoint = Endpoint("127.0.0.1", 443)
    return TlsData(
        timestamp_ns=1, pid=7, tid=7, uid=0, comm="producer", conn_id=1, fd=3,
        direction=Direction.SEND, call_id=index, call_len=len(data), offset=0, data=data,
        last_chunk=True, truncated=False, local=endpoint, remote=endpoint,
        lost_records=0, lost_bytes=0,
    )


class FakeReader:
    """Hands out the queued records, at most `batch` a poll, like RingReader."""

    def __init__(self, records: int, batch: int = 2048) -> None:
        self.queue = [raw_record(index) for index in range(records)]
        self.batch = batch

    def poll(self, timeout_ms: int) -> list[bytes]:
        taken, self.queue = self.queue[:self.batch], self.queue[self.batch:]
        return taken

    def close(self) -> None:
        pass


class FakeStats:
    max_entries = 8  # bpf/events.h STAT_MAX

    def __init__(self, values: dict[int, int]) -> None:
        self.values = values

    def lookup_percpu(self, key: bytes) -> list[bytes]:
        value = self.values.get(struct.unpack("<I", key)[0], 0)
        return [struct.pack("<Q", value), struct.pack("<Q", 0)]  # two CPUs


class FakeLoaded:
    def __init__(self, stats: dict[int, int]) -> None:
        self.stats = FakeStats(stats)
        self.closed = False
        self.detached = False

    def detach(self) -> None:
        self.detached = True

    def map(self, name: str) -> FakeStats:
        if name != "stats":
            raise BpfError(f"no map {name!r} in the fake")  # no ring positions: consumed
        if self.closed:
            raise BpfError("closed")
        return self.stats

    def close(self) -> None:
        self.closed = True


@dataclass
class RecordingWriter:
    """Keeps items; `on_flush` runs at every flush (advance a clock, stop...)."""

    on_flush: Callable[[], None] = lambda: None
    cut: CutCount = field(default_factory=CutCount)
    items: list[OutputItem] = field(default_factory=list)

    def write(self, item: OutputItem) -> None:
        self.items.append(item)

    def flush(self) -> None:
        self.on_flush()

    def close(self) -> None:
        pass

    def data(self) -> list[TlsData]:
        return [item for item in self.items if isinstance(item, TlsData)]

    def lost(self) -> list[Lost]:
        return [item for item in self.items if isinstance(item, Lost)]


class StubModule(Module):
    name = "stub"
    config_type = GlobalConfig
    object_file = "none.bpf.o"

    def prepare(self) -> None:
        pass

    def probes(self) -> Sequence[ProbeSpec]:
        return ()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeClock]:
    fake = FakeClock()
    monkeypatch.setattr(base, "_monotonic", fake)
    yield fake


def started(writers: Sequence[object], reader: FakeReader, *, timeout: float = 5.0,
            submitted: int = 0) -> tuple[StubModule, FakeLoaded]:
    """A module in state STARTED over fakes, wired as init() and start() wire it."""
    module = StubModule(GlobalConfig(drain_timeout_s=timeout))
    pipeline = Pipeline(writers, decoder=decode)  # type: ignore[arg-type]
    module._pipeline = pipeline
    module._stack.callback(pipeline.finish)
    loaded = FakeLoaded({Stat.RECORDS: submitted})
    module._loaded = loaded  # type: ignore[assignment]
    module._objects = {"stub": loaded}  # type: ignore[dict-item]
    module._stack.callback(loaded.close)
    module._reader = reader  # type: ignore[assignment]
    module._readers = [reader]  # type: ignore[list-item]
    module.state = ModuleState.STARTED
    return module, loaded


def summary(caplog: pytest.LogCaptureFixture) -> str:
    lines = [record.getMessage() for record in caplog.records
             if record.getMessage().startswith("summary:")]
    assert len(lines) == 1, lines
    return lines[0]


def test_a_ring_that_drains_in_time_loses_nothing(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    writer = RecordingWriter()
    reader = FakeReader(5000)
    module, loaded = started([writer], reader, submitted=5000)
    module.stop()
    module.close()
    assert loaded.detached and loaded.closed
    assert [item.call_id for item in writer.data()] == list(range(5000))
    assert writer.lost() == []
    line = summary(caplog)
    assert "kernel: 5000 submitted, 0 lost" in line and line.endswith("lost or cut: none")


def test_the_drain_stops_at_its_timeout_and_counts_the_rest(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)

    def slow() -> None:  # each slice of 1024 records takes 0.5 s
        clock.now += 0.5

    writer = RecordingWriter(on_flush=slow)
    module, _ = started([writer], FakeReader(20_000), timeout=2.0, submitted=20_000)
    module.stop()
    module.close()
    handed_on = len(writer.data())
    # Slices end at 0.5, 1.0, ... s: the one that ends at 2.0 s is the last.
    assert handed_on == 4 * base.SLICE_RECORDS
    (lost,) = writer.lost()
    assert lost.reason is LossReason.STOPPED
    assert lost.records == 20_000 - handed_on
    assert lost.bytes == lost.records * len(PAYLOAD)
    messages = [record.getMessage() for record in caplog.records]
    progress = [message for message in messages if message.startswith("stopping: ")]
    assert progress and progress[0].startswith("stopping: 2048 records written in 1 s")
    assert any(f"{lost.records} records ({lost.bytes} payload bytes) still in the ring after "
               "--drain-timeout 2 s; counted as lost (reason stopped)" in m for m in messages)
    assert (f"lost or cut: stopped {lost.records} records/{lost.bytes} bytes"
            in summary(caplog))


def test_the_ring_positions_give_the_backlog(
    clock: FakeClock, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a view of the ring, what it holds is counted from its headers,
    not consumed; progress says how much is left."""
    caplog.set_level(logging.INFO)

    class Ring:
        closed = False

        def backlog_bytes(self) -> int:
            return 3 << 20

        def backlog(self, *, header_size: int) -> Backlog:
            assert header_size == TLS_DATA_HEADER_SIZE
            return Backlog(records=40_000, payload=4_000_000, ring_bytes=3 << 20, exact=False)

        def close(self) -> None:
            self.closed = True

    ring = Ring()
    monkeypatch.setattr(StubModule, "_ring_positions", lambda self: ring)

    def slow() -> None:
        clock.now += 0.625  # exact in binary

    writer = RecordingWriter(on_flush=slow)
    reader = FakeReader(8192, batch=8192)
    module, _ = started([writer], reader, timeout=2.0)
    module.stop()
    module.close()
    assert ring.closed
    (lost,) = writer.lost()
    # 4 slices handed on (by 0.6, 1.2, 1.8, 2.4 s); the other 4096 of that
    # batch were read, not handed on; the ring's own backlog comes on top.
    assert len(writer.data()) == 4096
    assert (lost.records, lost.bytes) == (4096 + 40_000, 4096 * len(PAYLOAD) + 4_000_000)
    messages = "\n".join(record.getMessage() for record in caplog.records)
    assert "3.0 MiB (~" in messages and "records) left in the ring" in messages
    assert "estimated from the ring's positions" in messages


def test_a_second_stop_ends_the_drain_after_the_current_slice(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    module: StubModule | None = None
    flushes = 0

    def second_signal_on_third_slice() -> None:
        nonlocal flushes
        flushes += 1
        if flushes == 3 and module is not None:
            module.stop()  # what the handler does on the second SIGINT

    writer = RecordingWriter(on_flush=second_signal_on_third_slice)
    module, _ = started([writer], FakeReader(10_000), timeout=3600)
    module.stop()
    assert module.stopping
    module.close()
    assert len(writer.data()) == 3 * base.SLICE_RECORDS
    (lost,) = writer.lost()
    assert (lost.reason, lost.records) == (LossReason.STOPPED, 10_000 - 3 * base.SLICE_RECORDS)
    assert any("still in the ring at the second stop signal" in record.getMessage()
               for record in caplog.records)


def test_two_stops_before_close_hand_nothing_on(clock: FakeClock) -> None:
    writer = RecordingWriter()
    module, _ = started([writer], FakeReader(3000))
    module.stop()
    module.stop()
    module.close()
    assert writer.data() == []
    (lost,) = writer.lost()
    assert (lost.reason, lost.records, lost.bytes) == (
        LossReason.STOPPED, 3000, 3000 * len(PAYLOAD))


def dead_pipe_sink() -> FdSink:
    read_end, write_end = os.pipe()
    os.close(read_end)  # EPIPE on the first write (Python ignores SIGPIPE)
    return FdSink(write_end, "a closed pipe", owns_fd=True)


def numbers(summary_line: str) -> dict[str, int]:
    found = re.search(r"kernel: (\d+) submitted, (\d+) lost", summary_line)
    undelivered = re.search(r"undelivered (\d+) records/(\d+) bytes", summary_line)
    assert found and undelivered, summary_line
    return {
        "submitted": int(found[1]), "kernel_lost": int(found[2]),
        "records": int(undelivered[1]), "bytes": int(undelivered[2]),
    }


def test_a_sink_that_fails_while_running_is_summed_as_undelivered(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    sink = dead_pipe_sink()
    writer = JsonLinesWriter("stub", sink)
    reader = FakeReader(6000, batch=2000)
    module, loaded = started([writer], reader, submitted=6000)
    with pytest.raises(SinkError, match="writing events to a closed pipe failed"):
        module.run()  # the first batch's flush fails
    assert len(reader.queue) == 4000  # still in the ring
    module.close()  # no second error: the sink is dead, its writes dropped
    sink.close()
    assert loaded.closed
    counted = numbers(summary(caplog))
    # All read (the failed batch) or left in the ring, none delivered.
    assert counted == {"submitted": 6000, "kernel_lost": 0, "records": 6000,
                       "bytes": 6000 * len(PAYLOAD)}
    assert sink.dropped_bytes > 0


def test_a_sink_that_fails_during_the_drain_raises_after_the_summary(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    good = RecordingWriter()
    sink = dead_pipe_sink()
    module, _ = started([good, JsonLinesWriter("stub", sink)], FakeReader(3000),
                        submitted=3100)
    module.stop()
    with pytest.raises(SinkError):
        module.close()
    sink.close()
    assert module.state is ModuleState.CLOSED
    counted = numbers(summary(caplog))
    assert counted["submitted"] == 3100
    assert counted["records"] == 3000  # the first slice failed; nothing was delivered
    assert counted["bytes"] == 3000 * len(PAYLOAD)
    # The other writer (a HAR file, say) got the loss as an event.
    assert [(lost.reason, lost.records) for lost in good.lost()] == [
        (LossReason.UNDELIVERED, 3000)]


class SlowDetach(FakeLoaded):
    """Detaching takes until `released` is set (or 5 s): an uprobe's
    unregistration waits for RCU, ~0.1 s each."""

    def __init__(self, stats: dict[int, int]) -> None:
        super().__init__(stats)
        self.released = threading.Event()
        self.detaching = False

    def detach(self) -> None:
        self.detaching = True
        self.released.wait(5)
        self.detaching = False
        self.detached = True


class FakeNative:
    """The native core's poll: `ring` records, 100 a poll; lets the detach end
    after `release_after` polls made while it runs."""

    def __init__(self, loaded: SlowDetach, ring: int, release_after: int = 3) -> None:
        self.loaded, self.ring, self.release_after = loaded, ring, release_after
        self.polls_while_detaching = 0
        self.read = 0

    def poll(self, timeout_ms: int) -> tuple[int, int]:
        if self.loaded.detaching:
            self.polls_while_detaching += 1
            if self.polls_while_detaching >= self.release_after:
                self.loaded.released.set()
        taken = min(100, self.ring - self.read)
        self.read += taken
        return taken, taken * 100

    def count_undelivered(self) -> None:
        pass


def test_the_native_core_reads_the_ring_while_the_probes_detach(clock: FakeClock) -> None:
    module, _ = started([RecordingWriter()], FakeReader(0))
    loaded = SlowDetach({})
    module._loaded = module._objects["stub"] = loaded  # type: ignore[assignment]
    native = FakeNative(loaded, ring=1000)
    module._native = native  # type: ignore[assignment]
    module.stop()
    module.close()
    assert loaded.detached
    assert native.polls_while_detaching >= 3  # a sequential stop would have polled 0 times
    assert native.read == 1000  # and the rest after detaching


def test_without_the_native_core_the_readers_wait_for_the_detach(clock: FakeClock) -> None:
    writer = RecordingWriter()
    module, _ = started([writer], FakeReader(10))
    loaded = SlowDetach({})
    loaded.released.set()
    module._loaded = module._objects["stub"] = loaded  # type: ignore[assignment]
    module.stop()
    module.close()
    assert loaded.detached and len(writer.data()) == 10
