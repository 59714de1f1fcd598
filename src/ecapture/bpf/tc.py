"""TC clsact filters for our BPF programs, through libbpf's bpf_tc_* (libbpf >= 0.6).

A TC filter lives in the kernel's netlink state, not in a file descriptor:
unlike a uprobe link it outlives a killed process. So every filter we add
carries one recognisable handle and priority (ECAPTURE_TC_HANDLE/PRIORITY),
and `remove_leftover_filters` deletes a filter there whose program is ours
by name and that no process still holds (a live capture keeps its program's
fd open; a killed one left only the filter's reference). The clsact qdisc is
destroyed only by the process that created it (bpf_tc_hook_create returned 0,
not -EEXIST), when its last filter is gone: a qdisc someone else made,
with their filters, is never touched.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import socket
import threading
from pathlib import Path

from ecapture.bpf import _libbpf
from ecapture.errors import BpfError, ConfigError

logger = logging.getLogger(__name__)

BPF_TC_INGRESS = 1 << 0  # enum bpf_tc_attach_point, libbpf.h
BPF_TC_EGRESS = 1 << 1
# Ours: a filter at this handle and priority with one of our program names.
ECAPTURE_TC_HANDLE = 0xEC5A
ECAPTURE_TC_PRIORITY = 0xEC5A
PROGRAM_NAME_OFFSET = 64  # struct bpf_prog_info.name (include/uapi/linux/bpf.h)
PROGRAM_NAME_SIZE = 16  # BPF_OBJ_NAME_LEN
PROGRAM_INFO_SIZE = PROGRAM_NAME_OFFSET + PROGRAM_NAME_SIZE
POINTS = {"ingress": BPF_TC_INGRESS, "egress": BPF_TC_EGRESS}

# Interfaces whose clsact qdisc this process created -> our filters on it.
_created_qdiscs: dict[int, int] = {}
_qdisc_lock = threading.Lock()


def interface_index(name: str) -> int:
    try:
        return socket.if_nametoindex(name)
    except OSError as error:
        raise ConfigError(f"-i {name}: no such network interface") from error


def is_loopback(name: str) -> bool:
    """IFF_LOOPBACK (0x8) in /sys/class/net/NAME/flags (include/uapi/linux/if.h)."""
    try:
        return bool(int(Path(f"/sys/class/net/{name}/flags").read_text(), 16) & 0x8)
    except (OSError, ValueError):
        return False


def _hook(ifindex: int, point: int) -> _libbpf.TcHook:
    return _libbpf.TcHook(sz=ctypes.sizeof(_libbpf.TcHook), ifindex=ifindex, attach_point=point)


def _ours(prog_fd: int = 0) -> _libbpf.TcOptions:
    return _libbpf.TcOptions(
        sz=ctypes.sizeof(_libbpf.TcOptions), prog_fd=prog_fd,
        handle=ECAPTURE_TC_HANDLE, priority=ECAPTURE_TC_PRIORITY,
    )


class TcFilter:
    """One of our filters on one interface and direction; `close()` removes it, once."""

    def __init__(self, ifindex: int, point: int, description: str) -> None:
        self.ifindex = ifindex
        self.point = point
        self.description = description
        self.closed = False

    def __repr__(self) -> str:
        return f"TcFilter({self.description!r}, {'closed' if self.closed else 'attached'})"

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        library = _libbpf.libbpf()
        hook = _hook(self.ifindex, self.point)
        result = library.bpf_tc_detach(ctypes.byref(hook), ctypes.byref(_ours()))
        if result < 0 and result != -errno.ENOENT:  # ENOENT: the interface went away
            logger.warning("removing %s: %s", self.description, _libbpf.strerror(result))
        _release_qdisc(self.ifindex)


def _release_qdisc(ifindex: int) -> None:
    with _qdisc_lock:
        users = _created_qdiscs.get(ifindex)
        if users is None:
            return  # not ours: never destroyed
        if users > 1:
            _created_qdiscs[ifindex] = users - 1
            return
        del _created_qdiscs[ifindex]
    # both points: libbpf then deletes the clsact qdisc itself (libbpf.c, bpf_tc_hook_destroy)
    hook = _hook(ifindex, BPF_TC_INGRESS | BPF_TC_EGRESS)
    result = _libbpf.libbpf().bpf_tc_hook_destroy(ctypes.byref(hook))
    if result < 0 and result != -errno.ENOENT:
        logger.warning("removing the clsact qdisc of ifindex %d: %s", ifindex,
                       _libbpf.strerror(result))


def attach_filter(prog_fd: int, interface: str, direction: str) -> TcFilter:
    """Add our filter running `prog_fd` on `interface` (ingress or egress)."""
    point = POINTS[direction]
    ifindex = interface_index(interface)
    library = _libbpf.libbpf()
    hook = _hook(ifindex, point)
    with _qdisc_lock:
        created = library.bpf_tc_hook_create(ctypes.byref(hook))
        if created < 0 and created != -errno.EEXIST:
            raise _libbpf.error(f"creating the clsact qdisc of {interface}", created)
        if created == 0:
            _created_qdiscs[ifindex] = 0
        if ifindex in _created_qdiscs:
            _created_qdiscs[ifindex] += 1
    description = f"tc {direction} {interface} handle {ECAPTURE_TC_HANDLE:#x} " \
        f"prio {ECAPTURE_TC_PRIORITY}"
    options = _ours(prog_fd)
    result = library.bpf_tc_attach(ctypes.byref(hook), ctypes.byref(options))
    if result < 0:
        _release_qdisc(ifindex)
        if result == -errno.EEXIST:
            raise BpfError(
                f"{description}: a filter is already there (another ecapture capturing "
                f"{interface}?)"
            )
        raise _libbpf.error(f"attaching {description}", result)
    logger.debug("attached %s (prog id %d)", description, options.prog_id)
    return TcFilter(ifindex, point, description)


def program_name(prog_id: int) -> str | None:
    """The name of loaded program `prog_id`, None when it is gone."""
    library = _libbpf.libbpf()
    fd = library.bpf_prog_get_fd_by_id(prog_id)
    if fd < 0:
        return None
    try:
        info = ctypes.create_string_buffer(PROGRAM_INFO_SIZE)
        size = ctypes.c_uint32(PROGRAM_INFO_SIZE)
        if library.bpf_obj_get_info_by_fd(fd, info, ctypes.byref(size)) < 0:
            return None
        raw = info.raw[PROGRAM_NAME_OFFSET:PROGRAM_INFO_SIZE]
        return raw.split(b"\0", 1)[0].decode(errors="replace")
    finally:
        os.close(fd)


def programs_held_by_processes() -> set[int]:
    """prog_id of every BPF program some process holds an fd of (/proc/*/fdinfo)."""
    held: set[int] = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fdinfo")
        except OSError:
            continue  # exited, or not ours to read
        for fd in fds:
            try:
                text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
            except OSError:
                continue
            for line in text.splitlines():
                if line.startswith("prog_id:"):
                    held.add(int(line.split()[1]))
    return held


def remove_leftover_filters(interface: str, names: frozenset[str]) -> list[str]:
    """Delete filters at our handle/priority whose program is one of `names` and is held by
    no process (left by a killed run); what was removed, described."""
    ifindex = interface_index(interface)
    library = _libbpf.libbpf()
    removed: list[str] = []
    held: set[int] | None = None
    for direction, point in POINTS.items():
        hook = _hook(ifindex, point)
        options = _ours()
        result = library.bpf_tc_query(ctypes.byref(hook), ctypes.byref(options))
        if result < 0:
            continue  # no qdisc, or no filter at our handle/priority
        name = program_name(options.prog_id)
        if name not in names:
            logger.warning("tc %s %s: the filter at handle %#x prio %d runs %r, not ours: left",
                           direction, interface, ECAPTURE_TC_HANDLE, ECAPTURE_TC_PRIORITY, name)
            continue
        if held is None:
            held = programs_held_by_processes()
        if options.prog_id in held:
            continue  # a running capture's own filter
        result = library.bpf_tc_detach(ctypes.byref(hook), ctypes.byref(_ours()))
        if result < 0 and result != -errno.ENOENT:
            raise _libbpf.error(f"removing a leftover tc {direction} filter of {interface}",
                                result)
        removed.append(f"tc {direction} {interface} prog {name} id {options.prog_id}")
    for text in removed:
        logger.info("removed a filter a killed earlier run left behind: %s", text)
    return removed
