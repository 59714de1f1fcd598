"""Drives tests/bpf/ring_producer.bpf.c: a BPF program, run with BPF_PROG_TEST_RUN,
that writes records of known content into a real ring buffer map (see the program's
comment for the content). Used by test_ring.py and bench/native_ring.py."""

from __future__ import annotations

import ctypes
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from ecapture.bpf import LoadedObject, ObjectSpec, _libbpf
from ecapture.bpf.environment import can_trace, effective_capabilities

OBJECT = Path(__file__).resolve().parents[3] / "build" / "tests" / "ring_producer.bpf.o"
# struct produce_args: first, count, size_min, size_span, stride, stamp_at,
# discard_every, wakeup_flags, produced, discarded, full, bad_size
ARGS = struct.Struct("<QQ6IQQII")
MAX_RECORD = 32768
PATTERN_SIZE = 65536
PATTERN_WINDOW = 32768
NO_STAMP = MAX_RECORD
BPF_RB_NO_WAKEUP = 1
BPF_RB_FORCE_WAKEUP = 2


def skip_reason() -> str | None:
    """Why the producer cannot run here, or None."""
    capabilities = effective_capabilities(Path("/proc/self/status").read_text())
    if os.geteuid() != 0 or not can_trace(capabilities):
        return "needs root (CAP_BPF, CAP_PERFMON) to load a BPF program"
    if not OBJECT.is_file():
        return f"{OBJECT} is not built (make test-bpf)"
    return None


class _TestRunOptions(ctypes.Structure):
    """struct bpf_test_run_opts of libbpf 1.1."""

    _fields_ = (
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    )


@dataclass(frozen=True, slots=True)
class Shape:
    """What records a run writes (the program's produce_args)."""

    size_min: int
    size_span: int = 0
    stride: int = 0
    stamp_at: int = 0
    discard_every: int = 0
    wakeup_flags: int = 0

    def size(self, seq: int) -> int:
        if not self.size_span:
            return self.size_min
        mix = ((seq * 0x9E3779B97F4A7C15) & 0xFFFF_FFFF_FFFF_FFFF) >> 32
        return self.size_min + mix % self.size_span

    def expected(self, pattern: bytes, seq: int) -> bytes:
        """Record `seq` as the program writes it."""
        size = self.size(seq)
        offset = (seq * self.stride) & (PATTERN_WINDOW - 1)
        if self.stamp_at > MAX_RECORD - 8:
            return pattern[offset:offset + size]
        record = bytearray(pattern[offset:offset + max(size, self.stamp_at + 8)])
        record[self.stamp_at:self.stamp_at + 8] = seq.to_bytes(8, "little")
        return bytes(record[:size])


@dataclass(frozen=True, slots=True)
class Run:
    produced: int
    discarded: int
    full: bool


class Producer:
    """The loaded program and its maps; `run()` is one BPF_PROG_TEST_RUN."""

    def __init__(self, ring_bytes: int) -> None:
        spec = ObjectSpec.open(OBJECT)
        spec.set_map_max_entries("ring", ring_bytes)
        self.loaded: LoadedObject = spec.load()
        try:
            self.ring = self.loaded.map("ring")
            self._pattern = self.loaded.map("pattern")
            self._program_fd = _libbpf.libbpf().bpf_program__fd(
                self.loaded._program("produce"))
            # An instance of our own, so that these prototypes change nobody else's.
            library = ctypes.CDLL(_libbpf.LIBRARY_NAME, use_errno=True)
            self._test_run = library.bpf_prog_test_run_opts
            self._test_run.restype = ctypes.c_int
            self._test_run.argtypes = (ctypes.c_int, ctypes.POINTER(_TestRunOptions))
        except BaseException:
            self.loaded.close()
            raise

    def set_pattern(self, pattern: bytes) -> None:
        assert len(pattern) == PATTERN_SIZE
        self._pattern.update(struct.pack("<I", 0), pattern)

    def run(self, shape: Shape, first: int, count: int) -> Run:
        """Write records first..first+count-1 (fewer when the ring fills up)."""
        buffer = ctypes.create_string_buffer(ARGS.pack(
            first, count, shape.size_min, shape.size_span, shape.stride, shape.stamp_at,
            shape.discard_every, shape.wakeup_flags, 0, 0, 0, 0), ARGS.size)
        options = _TestRunOptions(sz=ctypes.sizeof(_TestRunOptions),
                                  ctx_in=ctypes.addressof(buffer), ctx_size_in=ARGS.size)
        result = self._test_run(self._program_fd, ctypes.byref(options))  # without the GIL
        if result < 0:
            raise _libbpf.error("running ring_producer's produce", result)
        *_, produced, discarded, full, bad_size = ARGS.unpack(buffer.raw)
        if bad_size:
            raise ValueError(f"{shape} gives a record size outside 1..{MAX_RECORD}")
        return Run(produced, discarded, bool(full))

    def fill(self, shape: Shape, first: int = 0) -> int:
        """Run until the ring is full; the number of records written."""
        total = 0
        while True:
            run = self.run(shape, first + total, 1 << 20)
            total += run.produced
            if run.full:
                return total

    def close(self) -> None:
        self.loaded.close()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
