"""Readers of the records BPF programs submit: ring buffer, perf buffer as fallback.

A reader copies each record out as bytes and never decodes it (docs/architecture.md#layers:
decoding is events.py's job). The ctypes callbacks only append: a callback
that returns < 0 still consumes its record (docs/kernel.md#the-libbpf-we-link),
so nothing is retried.
`close()` waits for a poll running on another thread (at most its timeout),
then frees the buffer; a later poll returns [].
"""

from __future__ import annotations

import ctypes
import errno
import threading
from dataclasses import dataclass

from ecapture.bpf import _libbpf
from ecapture.errors import BpfError


@dataclass(frozen=True, slots=True)
class LostSamples:
    """The kernel dropped `count` perf samples on `cpu` at this point of the stream."""

    cpu: int
    count: int


# Returned by the sample callback to end a poll once a batch is full. libbpf
# advances the consumer position before calling back, so the record that
# returned it is consumed and (already copied) kept: nothing is lost or retried.
_BATCH_FULL = -errno.ECANCELED
DEFAULT_MAX_BATCH = 16384
DEFAULT_MAX_BATCH_BYTES = 4 << 20


class RingReader:
    """Reads a BPF_MAP_TYPE_RINGBUF map through libbpf's ring_buffer.

    One poll returns at most `max_batch` records or about `max_batch_bytes`,
    so a full 64 MiB ring is drained in bounded slices: the caller processes
    each slice while the kernel keeps filling the ring, instead of stalling
    on tens of MB at once (measured with 16 KiB records: whole-ring batches
    stalled the reader long enough for the ring to overflow).
    """

    def __init__(
        self, map_fd: int, map_name: str, *, max_batch: int = DEFAULT_MAX_BATCH,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    ) -> None:
        if max_batch <= 0 or max_batch_bytes <= 0:
            raise BpfError(
                f"ring reader batch must be > 0; got {max_batch} records, {max_batch_bytes} bytes"
            )
        self.map_name = map_name
        pending: list[bytes] = []
        append = pending.append
        string_at = ctypes.string_at
        pending_bytes = [0]  # a cell: the callback cannot rebind an outer int

        def on_sample(_context: int | None, data: int, size: int) -> int:
            append(string_at(data, size))
            pending_bytes[0] += size
            if len(pending) >= max_batch or pending_bytes[0] >= max_batch_bytes:
                return _BATCH_FULL
            return 0

        self._pending_bytes = pending_bytes

        self._pending = pending
        self._callback = _libbpf.RING_SAMPLE_FN(on_sample)  # libbpf keeps only the pointer
        self._lock = threading.Lock()
        self._ring: int | None = _libbpf.libbpf().ring_buffer__new(
            map_fd, self._callback, None, None
        )
        if not self._ring:
            self._ring = None
            raise _libbpf.error(f"creating a ring buffer reader for map {map_name!r}")

    def fileno(self) -> int:
        """An epoll fd that turns readable when the kernel wakes the reader."""
        if self._ring is None:
            return -1
        fd: int = _libbpf.libbpf().ring_buffer__epoll_fd(self._ring)
        return fd

    def poll(self, timeout_ms: int) -> list[bytes]:
        """Wait up to `timeout_ms` for a wake-up, then take the records in the ring, in order
        (at most `max_batch`; an empty list means the ring is empty).

        ring_buffer__poll consumes nothing when no wake-up came (BPF_RB_NO_WAKEUP
        producers, docs/kernel.md#wake-ups), so ring_buffer__consume follows it.
        """
        library = _libbpf.libbpf()
        with self._lock:
            if self._ring is None:
                return []
            result = library.ring_buffer__poll(self._ring, timeout_ms)
            # A signal only cuts the wait short; a full batch ends it early.
            if result < 0 and result not in (-errno.EINTR, _BATCH_FULL):
                self._pending.clear()
                self._pending_bytes[0] = 0
                raise _libbpf.error(f"polling ring buffer {self.map_name!r}", result)
            if result != _BATCH_FULL:
                result = library.ring_buffer__consume(self._ring)
            records = self._pending.copy()
            self._pending.clear()
            self._pending_bytes[0] = 0
        if result < 0 and result != _BATCH_FULL:
            raise _libbpf.error(f"consuming ring buffer {self.map_name!r}", result)
        return records

    def close(self) -> None:
        with self._lock:
            if self._ring is not None:
                _libbpf.libbpf().ring_buffer__free(self._ring)
                self._ring = None


class PerfReader:
    """Reads a BPF_MAP_TYPE_PERF_EVENT_ARRAY map (kernels < 5.8 have no ring buffer).

    Lost samples arrive in band, where the kernel reported them, as `LostSamples`.
    """

    def __init__(self, map_fd: int, map_name: str, pages_per_cpu: int) -> None:
        if pages_per_cpu <= 0 or pages_per_cpu & (pages_per_cpu - 1):
            # perf_buffer__new refuses it too, with a less helpful EINVAL
            raise BpfError(f"perf buffer pages per CPU must be a power of two; got {pages_per_cpu}")
        self.map_name = map_name
        pending: list[bytes | LostSamples] = []
        append = pending.append
        string_at = ctypes.string_at

        def on_sample(_context: int | None, _cpu: int, data: int, size: int) -> None:
            append(string_at(data, size))

        def on_lost(_context: int | None, cpu: int, count: int) -> None:
            append(LostSamples(cpu, count))

        self._pending = pending
        self._sample_callback = _libbpf.PERF_SAMPLE_FN(on_sample)
        self._lost_callback = _libbpf.PERF_LOST_FN(on_lost)
        self._lock = threading.Lock()
        self._buffer: int | None = _libbpf.libbpf().perf_buffer__new(
            map_fd, pages_per_cpu, self._sample_callback, self._lost_callback, None, None
        )
        if not self._buffer:
            self._buffer = None
            raise _libbpf.error(f"creating a perf buffer reader for map {map_name!r}")

    def fileno(self) -> int:
        if self._buffer is None:
            return -1
        fd: int = _libbpf.libbpf().perf_buffer__epoll_fd(self._buffer)
        return fd

    def poll(self, timeout_ms: int) -> list[bytes | LostSamples]:
        """Wait up to `timeout_ms`, then take every pending sample of every CPU."""
        library = _libbpf.libbpf()
        with self._lock:
            if self._buffer is None:
                return []
            result = library.perf_buffer__poll(self._buffer, timeout_ms)
            if result < 0 and result != -errno.EINTR:
                self._pending.clear()
                raise _libbpf.error(f"polling perf buffer {self.map_name!r}", result)
            result = library.perf_buffer__consume(self._buffer)
            records = self._pending.copy()
            self._pending.clear()
        if result < 0:
            raise _libbpf.error(f"consuming perf buffer {self.map_name!r}", result)
        return records

    def close(self) -> None:
        with self._lock:
            if self._buffer is not None:
                _libbpf.libbpf().perf_buffer__free(self._buffer)
                self._buffer = None
