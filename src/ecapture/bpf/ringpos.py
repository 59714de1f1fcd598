"""What a BPF ring buffer still holds: its positions and record headers, read-only.

libbpf 1.1 has no call for it (ring__avail_data_size() came with libbpf
1.3), so this maps the map's pages the way libbpf's ring_buffer__add()
does, but read-only: page 0 holds the consumer position, page 1 the
producer position, and the data pages follow it (kernel/bpf/ringbuf.c,
ringbuf_map_mmap_kern: a read-only mapping may start at any page). Each
record starts with an 8-byte header, `u32 len` (bit 31 busy: reserved,
not yet committed; bit 30 discarded) and `u32 pg_off`, and takes
round_up(len + 8, 8) bytes (include/uapi/linux/bpf.h BPF_RINGBUF_*,
libbpf ringbuf.c roundup_len). Nothing here consumes a record.
"""

from __future__ import annotations

import mmap
import struct
import time
from dataclasses import dataclass

from ecapture.errors import BpfError

BUSY_BIT = 1 << 31  # BPF_RINGBUF_BUSY_BIT
DISCARD_BIT = 1 << 30  # BPF_RINGBUF_DISCARD_BIT
HEADER_SIZE = 8  # BPF_RINGBUF_HDR_SZ
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


@dataclass(frozen=True, slots=True)
class Backlog:
    """The committed records between the consumer and the producer position.

    `records` and `payload` are exact when `exact`; a walk cut short by its
    time limit extrapolates the rest from the records it saw."""

    records: int
    payload: int  # sum over records of (record length - the caller's header size)
    ring_bytes: int  # producer - consumer position: headers and padding included
    exact: bool


class RingPositions:
    """Read-only view of one ring buffer map's positions and record headers."""

    def __init__(self, map_fd: int, size: int) -> None:
        if size <= 0 or size & (size - 1):
            raise BpfError(f"ring buffer size must be a power of two; got {size}")
        self.size = size
        page = mmap.PAGESIZE
        try:
            self._consumer = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ, offset=0)
        except OSError as error:
            raise BpfError(f"mapping the ring's consumer page: {error.strerror}") from error
        try:
            # The producer page, then the data pages (the kernel maps them twice
            # in a row so that a record can wrap; headers never do: 8-aligned).
            self._producer = mmap.mmap(
                map_fd, page + size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page
            )
        except OSError as error:
            self._consumer.close()
            raise BpfError(f"mapping the ring's producer page: {error.strerror}") from error
        self._data_offset = page

    def positions(self) -> tuple[int, int]:
        """(consumer, producer): byte counters that only grow."""
        consumer: int = _U64.unpack_from(self._consumer, 0)[0]
        producer: int = _U64.unpack_from(self._producer, 0)[0]
        return consumer, producer

    def backlog_bytes(self) -> int:
        consumer, producer = self.positions()
        return max(producer - consumer, 0)

    def backlog(self, *, header_size: int, time_limit_s: float = 0.5) -> Backlog:
        """Walk the record headers from the consumer to the producer position.

        `header_size` is the part of each record that is not payload (the
        caller's struct header); shorter records count 0 payload. A record
        still busy (reserved, not committed) ends the walk. Past
        `time_limit_s` (~1.1 us a record here: 0.5 s covers ~450k; a 256 MiB
        ring of small records holds millions) the rest is extrapolated from
        the average record seen so far."""
        consumer, producer = self.positions()
        total = max(producer - consumer, 0)
        data, base, mask = self._producer, self._data_offset, self.size - 1
        unpack = _U32.unpack_from
        deadline = time.monotonic() + time_limit_s
        records = payload = 0
        position = consumer
        cut_short = False
        while position < producer:
            length: int = unpack(data, base + (position & mask))[0]
            if length & BUSY_BIT:
                break
            size = length & ~(BUSY_BIT | DISCARD_BIT)
            if not length & DISCARD_BIT:
                records += 1
                payload += max(size - header_size, 0)
            position += (size + HEADER_SIZE + 7) & ~7
            if records & 0xFFF == 0 and time.monotonic() > deadline:
                cut_short = position < producer
                break
        walked = position - consumer
        if not cut_short or not walked:
            return Backlog(records, payload, total, exact=True)
        scale = total / walked
        return Backlog(round(records * scale), round(payload * scale), total, exact=False)

    def close(self) -> None:
        self._consumer.close()
        self._producer.close()
