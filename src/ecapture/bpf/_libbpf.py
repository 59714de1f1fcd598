"""ctypes bindings of the part of Debian's libbpf.so.1 (1.1.x) we use.

Prototypes follow /usr/include/bpf/libbpf.h, bpf.h and btf.h of libbpf-dev 1.1.2.
libbpf 1.x returns NULL and sets errno from pointer-returning calls, and a
negative error code (errno set too) from int-returning ones; `error()` turns
either into a `BpfError` with libbpf's own text for the code.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as errno_codes
import functools
import logging
import os
import platform
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ecapture.errors import BpfError

LIBRARY_NAME = "libbpf.so.1"
DEBIAN_PACKAGE = "libbpf1"

logger = logging.getLogger("ecapture.bpf.libbpf")

c_size_t_p = ctypes.POINTER(ctypes.c_size_t)

# libbpf_print_fn_t: int (*)(enum libbpf_print_level, const char *fmt, va_list ap).
# va_list decays to a pointer when passed (x86-64 SysV: an array of one
# __va_list_tag; AArch64: a 32-byte struct passed by reference), so c_void_p.
PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
# ring_buffer_sample_fn: int (*)(void *ctx, void *data, size_t size)
RING_SAMPLE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
# perf_buffer_sample_fn: void (*)(void *ctx, int cpu, void *data, __u32 size)
PERF_SAMPLE_FN = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32
)
# perf_buffer_lost_fn: void (*)(void *ctx, int cpu, __u64 cnt)
PERF_LOST_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64)

LIBBPF_WARN = 0  # enum libbpf_print_level
BPF_MAP_TYPE_PERF_EVENT_ARRAY = 4  # enum bpf_map_type, include/uapi/linux/bpf.h
BPF_MAP_TYPE_RINGBUF = 27
BTF_KIND_VAR = 14  # include/uapi/linux/btf.h
BTF_KIND_DATASEC = 15


class ObjectOpenOptions(ctypes.Structure):
    """struct bpf_object_open_opts (libbpf 1.1: 80 bytes, checked by a unit test)."""

    _fields_ = (
        ("sz", ctypes.c_size_t),
        ("object_name", ctypes.c_char_p),
        ("relaxed_maps", ctypes.c_bool),
        ("pin_root_path", ctypes.c_char_p),
        ("_removed_attach_prog_fd", ctypes.c_uint32),
        ("kconfig", ctypes.c_char_p),
        ("btf_custom_path", ctypes.c_char_p),
        ("kernel_log_buf", ctypes.c_void_p),
        ("kernel_log_size", ctypes.c_size_t),
        ("kernel_log_level", ctypes.c_uint32),
    )


class UprobeOptions(ctypes.Structure):
    """struct bpf_uprobe_opts (libbpf 1.1: 40 bytes)."""

    _fields_ = (
        ("sz", ctypes.c_size_t),
        ("ref_ctr_offset", ctypes.c_size_t),
        ("bpf_cookie", ctypes.c_uint64),
        ("retprobe", ctypes.c_bool),
        ("func_name", ctypes.c_char_p),
    )


class TcHook(ctypes.Structure):
    """struct bpf_tc_hook (libbpf 1.1: 24 bytes)."""

    _fields_ = (
        ("sz", ctypes.c_size_t),
        ("ifindex", ctypes.c_int),
        ("attach_point", ctypes.c_int),  # enum bpf_tc_attach_point
        ("parent", ctypes.c_uint32),
    )


class TcOptions(ctypes.Structure):
    """struct bpf_tc_opts (libbpf 1.1: 32 bytes)."""

    _fields_ = (
        ("sz", ctypes.c_size_t),
        ("prog_fd", ctypes.c_int),
        ("flags", ctypes.c_uint32),
        ("prog_id", ctypes.c_uint32),
        ("handle", ctypes.c_uint32),
        ("priority", ctypes.c_uint32),
    )


class BtfType(ctypes.Structure):
    """struct btf_type: name_off, info (kind in bits 24-28, vlen in 0-15), size/type."""

    _fields_ = (
        ("name_off", ctypes.c_uint32),
        ("info", ctypes.c_uint32),
        ("size_or_type", ctypes.c_uint32),
    )


class BtfVarSecinfo(ctypes.Structure):
    """struct btf_var_secinfo: follows a DATASEC btf_type, one per variable."""

    _fields_ = (
        ("type", ctypes.c_uint32),
        ("offset", ctypes.c_uint32),
        ("size", ctypes.c_uint32),
    )


_P = ctypes.c_void_p
_I = ctypes.c_int
_PROTOTYPES: dict[str, tuple[Any, tuple[Any, ...]]] = {
    "libbpf_strerror": (_I, (_I, ctypes.c_char_p, ctypes.c_size_t)),
    "libbpf_set_print": (_P, (PRINT_FN,)),
    "libbpf_num_possible_cpus": (_I, ()),
    "libbpf_probe_bpf_map_type": (_I, (_I, _P)),
    "bpf_object__open_file": (_P, (ctypes.c_char_p, ctypes.POINTER(ObjectOpenOptions))),
    "bpf_object__load": (_I, (_P,)),
    "bpf_object__close": (None, (_P,)),
    "bpf_object__btf": (_P, (_P,)),
    "bpf_object__next_program": (_P, (_P, _P)),
    "bpf_object__next_map": (_P, (_P, _P)),
    "bpf_object__find_program_by_name": (_P, (_P, ctypes.c_char_p)),
    "bpf_object__find_map_by_name": (_P, (_P, ctypes.c_char_p)),
    "bpf_program__name": (ctypes.c_char_p, (_P,)),
    "bpf_program__section_name": (ctypes.c_char_p, (_P,)),
    "bpf_program__set_autoload": (_I, (_P, ctypes.c_bool)),
    "bpf_program__attach": (_P, (_P,)),
    "bpf_program__attach_uprobe_opts": (
        _P,
        (_P, _I, ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(UprobeOptions)),
    ),
    "bpf_program__attach_raw_tracepoint": (_P, (_P, ctypes.c_char_p)),
    "bpf_program__attach_tracepoint": (_P, (_P, ctypes.c_char_p, ctypes.c_char_p)),
    "bpf_link__destroy": (_I, (_P,)),
    "bpf_map__name": (ctypes.c_char_p, (_P,)),
    "bpf_map__fd": (_I, (_P,)),
    "bpf_map__type": (_I, (_P,)),
    "bpf_map__key_size": (ctypes.c_uint32, (_P,)),
    "bpf_map__value_size": (ctypes.c_uint32, (_P,)),
    "bpf_map__max_entries": (ctypes.c_uint32, (_P,)),
    "bpf_map__set_max_entries": (_I, (_P, ctypes.c_uint32)),
    "bpf_map__initial_value": (_P, (_P, c_size_t_p)),
    "bpf_map__lookup_elem": (_I, (_P, _P, ctypes.c_size_t, _P, ctypes.c_size_t, ctypes.c_uint64)),
    "bpf_map__update_elem": (_I, (_P, _P, ctypes.c_size_t, _P, ctypes.c_size_t, ctypes.c_uint64)),
    "bpf_map__delete_elem": (_I, (_P, _P, ctypes.c_size_t, ctypes.c_uint64)),
    "btf__find_by_name_kind": (ctypes.c_int32, (_P, ctypes.c_char_p, ctypes.c_uint32)),
    "btf__type_by_id": (_P, (_P, ctypes.c_uint32)),
    "btf__name_by_offset": (ctypes.c_char_p, (_P, ctypes.c_uint32)),
    "ring_buffer__new": (_P, (_I, RING_SAMPLE_FN, _P, _P)),
    "ring_buffer__poll": (_I, (_P, _I)),
    "ring_buffer__consume": (_I, (_P,)),
    "ring_buffer__epoll_fd": (_I, (_P,)),
    "ring_buffer__free": (None, (_P,)),
    "perf_buffer__new": (_P, (_I, ctypes.c_size_t, PERF_SAMPLE_FN, PERF_LOST_FN, _P, _P)),
    "perf_buffer__poll": (_I, (_P, _I)),
    "perf_buffer__consume": (_I, (_P,)),
    "perf_buffer__epoll_fd": (_I, (_P,)),
    "perf_buffer__free": (None, (_P,)),
    "bpf_program__fd": (_I, (_P,)),
    "bpf_tc_hook_create": (_I, (ctypes.POINTER(TcHook),)),
    "bpf_tc_hook_destroy": (_I, (ctypes.POINTER(TcHook),)),
    "bpf_tc_attach": (_I, (ctypes.POINTER(TcHook), ctypes.POINTER(TcOptions))),
    "bpf_tc_detach": (_I, (ctypes.POINTER(TcHook), ctypes.POINTER(TcOptions))),
    "bpf_tc_query": (_I, (ctypes.POINTER(TcHook), ctypes.POINTER(TcOptions))),
    "bpf_prog_get_fd_by_id": (_I, (ctypes.c_uint32,)),
    "bpf_obj_get_info_by_fd": (_I, (_I, _P, ctypes.POINTER(ctypes.c_uint32))),
}


@functools.cache
def libbpf() -> ctypes.CDLL:
    """Load libbpf.so.1 once, declare the prototypes, route its messages to logging."""
    try:
        library = ctypes.CDLL(LIBRARY_NAME, use_errno=True)
    except OSError as exc:
        raise BpfError(
            f"cannot load {LIBRARY_NAME} ({exc}); install the Debian package {DEBIAN_PACKAGE}"
        ) from None
    for name, (restype, argtypes) in _PROTOTYPES.items():
        function = getattr(library, name)
        function.restype = restype
        function.argtypes = argtypes
    library.libbpf_set_print(_PRINT_CALLBACK)
    return library


@functools.cache
def _libc() -> ctypes.CDLL:
    library = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    library.vsnprintf.restype = ctypes.c_int
    library.vsnprintf.argtypes = (ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, _P)
    return library


# Kernel-internal codes that leak to user space and that libc has no text for
# (include/linux/errno.h).
_KERNEL_ERRNO_TEXT = {
    524: "Operation not supported by this map or program type (ENOTSUPP)",
}


def strerror(code: int) -> str:
    """libbpf's text for an error code (it knows its own LIBBPF_ERRNO__* codes too)."""
    if abs(code) in _KERNEL_ERRNO_TEXT:
        return _KERNEL_ERRNO_TEXT[abs(code)]
    buffer = ctypes.create_string_buffer(256)
    libbpf().libbpf_strerror(abs(code), buffer, len(buffer))
    return buffer.value.decode(errors="replace") or os.strerror(abs(code))


def error(what: str, code: int | None = None) -> BpfError:
    """A BpfError for a failed call: `code` is the negative return, or None to use errno."""
    number = abs(code) if code else ctypes.get_errno()
    if number == 0:
        number = errno_codes.EINVAL  # libbpf failed without saying why; never report "Success"
    return BpfError(f"{what}: {strerror(number)} (errno {number})")


def check(result: int, what: str) -> int:
    """Raise for a negative return of an int-returning libbpf call."""
    if result < 0:
        raise error(what, result)
    return result


# --- libbpf's print callback -------------------------------------------------

# va_copy is a plain copy of the va_list object on these ABIs; knowing its size
# lets us measure a message before formatting it whole (verifier logs can be MiBs).
_VA_LIST_SIZE = {"x86_64": 24, "aarch64": 32}.get(platform.machine())
_FALLBACK_MESSAGE_SIZE = 1 << 16


def _format(fmt: bytes, arguments: int) -> str:
    libc = _libc()
    if _VA_LIST_SIZE is None:
        buffer = ctypes.create_string_buffer(_FALLBACK_MESSAGE_SIZE)
        libc.vsnprintf(buffer, len(buffer), fmt, arguments)
        return buffer.value.decode(errors="replace")
    copy = ctypes.create_string_buffer(_VA_LIST_SIZE)
    ctypes.memmove(copy, arguments, _VA_LIST_SIZE)
    length = libc.vsnprintf(None, 0, fmt, ctypes.addressof(copy))
    buffer = ctypes.create_string_buffer(max(length, 0) + 1)
    libc.vsnprintf(buffer, len(buffer), fmt, arguments)
    return buffer.value.decode(errors="replace")


class _Capture(threading.local):
    """Warnings libbpf printed on this thread while a load was being captured."""

    messages: list[str] | None = None


_capture = _Capture()


def _print(level: int, fmt: bytes | None, arguments: int | None) -> int:
    capturing = _capture.messages is not None and level == LIBBPF_WARN
    if fmt is None or arguments is None or not (capturing or logger.isEnabledFor(logging.DEBUG)):
        return 0
    message = _format(fmt, arguments).rstrip("\n")
    if capturing and _capture.messages is not None:
        _capture.messages.append(message)
    logger.debug("%s", message)
    return 0


_PRINT_CALLBACK = PRINT_FN(_print)  # module-level: libbpf keeps the pointer forever


@contextmanager
def captured_warnings() -> Iterator[list[str]]:
    """Collect libbpf's warnings (verifier logs among them) printed inside the block."""
    messages: list[str] = []
    outer = _capture.messages
    _capture.messages = messages
    try:
        yield messages
    finally:
        _capture.messages = outer
