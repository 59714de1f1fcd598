"""What the machine must offer before anything is loaded, checked up front.

Each failure names the feature, the minimum kernel and what to do
(cilium/ebpf internal/feature.go does the same for its probes).
"""

from __future__ import annotations

import functools
import logging
import os
import resource
from pathlib import Path

from ecapture.bpf import _libbpf
from ecapture.errors import PermissionDenied, UnsupportedKernel

logger = logging.getLogger(__name__)

KERNEL_BTF = Path("/sys/kernel/btf/vmlinux")
UPROBE_PMU_TYPE = Path("/sys/bus/event_source/devices/uprobe/type")
PROCESS_STATUS = Path("/proc/self/status")

# Capability numbers, include/uapi/linux/capability.h.
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39


def effective_capabilities(status_text: str) -> int:
    """The CapEff bit mask of a /proc/PID/status text (0 when absent)."""
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split(":", 1)[1].strip(), 16)
    return 0


def can_trace(capabilities: int) -> bool:
    """CAP_BPF + CAP_PERFMON (Linux >= 5.8), or CAP_SYS_ADMIN which older kernels need."""

    def has(bit: int) -> bool:
        return bool(capabilities >> bit & 1)

    return has(CAP_SYS_ADMIN) or (has(CAP_BPF) and has(CAP_PERFMON))


def check_environment(*, btf_custom_path: str | None = None) -> None:
    """Raise the first reason this machine cannot run the capture, in the user's terms."""
    if not can_trace(effective_capabilities(PROCESS_STATUS.read_text())):
        raise PermissionDenied("ecapture needs root (CAP_BPF and CAP_PERFMON); run it with sudo")
    if btf_custom_path is not None:
        if not Path(btf_custom_path).is_file():
            raise UnsupportedKernel(f"the BTF file {btf_custom_path} (--btf-file) does not exist")
    elif not KERNEL_BTF.exists():
        raise UnsupportedKernel(
            f"this kernel exposes no BTF at {KERNEL_BTF} (needs Linux >= 5.4 built with "
            "CONFIG_DEBUG_INFO_BTF=y); pass a BTF file for this kernel with --btf-file PATH "
            "(e.g. from btfhub)"
        )
    _libbpf.libbpf()  # raises BpfError naming the Debian package libbpf1
    if not ring_buffer_supported():
        raise UnsupportedKernel(
            "this kernel has no BPF ring buffer (BPF_MAP_TYPE_RINGBUF needs Linux >= 5.8)"
        )
    if not UPROBE_PMU_TYPE.exists():
        raise UnsupportedKernel(
            f"this kernel has no uprobe PMU ({UPROBE_PMU_TYPE} is missing; uprobes through "
            "perf_event_open need Linux >= 4.17 built with CONFIG_UPROBE_EVENTS=y)"
        )


@functools.cache
def ring_buffer_supported() -> bool:
    """Whether the kernel creates BPF_MAP_TYPE_RINGBUF maps (libbpf's own probe)."""
    result: int = _libbpf.libbpf().libbpf_probe_bpf_map_type(_libbpf.BPF_MAP_TYPE_RINGBUF, None)
    if result < 0:
        logger.debug("ring buffer probe failed: %s", _libbpf.strerror(result))
    return result == 1


@functools.cache
def raise_memlock_limit() -> None:
    """Lift RLIMIT_MEMLOCK where allowed; kernels >= 5.11 charge BPF memory to the memory
    cgroup instead, and here the limit is capped at 8 MiB (docs/kernel.md#memlock-limit):
    not an error."""
    try:
        unlimited = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
        resource.setrlimit(resource.RLIMIT_MEMLOCK, unlimited)
    except (ValueError, OSError) as exc:
        soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
        logger.debug(
            "RLIMIT_MEMLOCK stays at %s bytes (%s); BPF memory is charged to the memory cgroup",
            soft,
            exc,
            extra={"pid": os.getpid()},
        )
