"""A small typed wrapper over libbpf.so.1 (1.1) through ctypes, after cilium/ebpf.

spec = ObjectSpec.open(path)            # ELF + BTF parsed; no kernel yet
spec.set_constant("target_pid", pid)    # .rodata, before load only
with spec.load() as loaded:             # a failed load closes what it made
    loaded.attach_uprobe("probe", libssl, symbol="SSL_write")
    reader = loaded.ring_reader("events")
    records = reader.poll(10)           # raw bytes; decoding is events.py's job
"""

from ecapture.bpf.environment import check_environment, ring_buffer_supported
from ecapture.bpf.loaded import Link, LoadedObject
from ecapture.bpf.maps import Map
from ecapture.bpf.readers import LostSamples, PerfReader, RingReader
from ecapture.bpf.spec import ObjectSpec

__all__ = [
    "Link",
    "LoadedObject",
    "LostSamples",
    "Map",
    "ObjectSpec",
    "PerfReader",
    "RingReader",
    "check_environment",
    "ring_buffer_supported",
]
