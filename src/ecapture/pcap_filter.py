"""A tcpdump filter expression ("tcp port 443 and host 10.0.0.1"), compiled by libpcap.

libpcap is the reference for the expression language (pcap-filter(7)): it is
compiled with pcap_compile on a "dead" handle of the capture's link type and
run on each packet with pcap_offline_filter, in user space for now
(prototypes: /usr/include/pcap/pcap.h of libpcap 1.10, Debian libpcap0.8).
"""

from __future__ import annotations

import ctypes
import functools

from ecapture.errors import ConfigError

LIBRARY_NAME = "libpcap.so.0.8"  # Debian's soname of libpcap 1.x
DEBIAN_PACKAGE = "libpcap0.8"
PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF
LINKTYPE_ETHERNET = 1
DEFAULT_SNAPLEN = 262144


class BpfProgram(ctypes.Structure):
    """struct bpf_program: bf_len, bf_insns."""

    _fields_ = (("bf_len", ctypes.c_uint), ("bf_insns", ctypes.c_void_p))


class PacketHeader(ctypes.Structure):
    """struct pcap_pkthdr: struct timeval ts, caplen, len."""

    _fields_ = (
        ("tv_sec", ctypes.c_long),
        ("tv_usec", ctypes.c_long),
        ("caplen", ctypes.c_uint32),
        ("len", ctypes.c_uint32),
    )


@functools.cache
def _libpcap() -> ctypes.CDLL:
    try:
        library = ctypes.CDLL(LIBRARY_NAME)
    except OSError as error:
        raise ConfigError(
            f"a packet filter needs {LIBRARY_NAME} ({error}); install the Debian package "
            f"{DEBIAN_PACKAGE}"
        ) from None
    library.pcap_open_dead.restype = ctypes.c_void_p
    library.pcap_open_dead.argtypes = (ctypes.c_int, ctypes.c_int)
    library.pcap_compile.restype = ctypes.c_int
    library.pcap_compile.argtypes = (
        ctypes.c_void_p, ctypes.POINTER(BpfProgram), ctypes.c_char_p, ctypes.c_int,
        ctypes.c_uint32,
    )
    library.pcap_geterr.restype = ctypes.c_char_p
    library.pcap_geterr.argtypes = (ctypes.c_void_p,)
    library.pcap_offline_filter.restype = ctypes.c_int
    library.pcap_offline_filter.argtypes = (
        ctypes.POINTER(BpfProgram), ctypes.POINTER(PacketHeader), ctypes.c_char_p,
    )
    library.pcap_freecode.restype = None
    library.pcap_freecode.argtypes = (ctypes.POINTER(BpfProgram),)
    library.pcap_close.restype = None
    library.pcap_close.argtypes = (ctypes.c_void_p,)
    return library


class PacketFilter:
    """`expression` compiled for `linktype`; `matches(frame, length)` runs it."""

    def __init__(self, expression: str, *, linktype: int = LINKTYPE_ETHERNET,
                 snaplen: int = DEFAULT_SNAPLEN, flag: str = "filter") -> None:
        self.expression = expression
        library = _libpcap()
        self._program = BpfProgram()
        self._header = PacketHeader()
        handle = library.pcap_open_dead(linktype, snaplen)
        if not handle:
            raise ConfigError(f"{flag} {expression!r}: libpcap could not open a handle")
        try:
            if library.pcap_compile(handle, ctypes.byref(self._program), expression.encode(),
                                    1, PCAP_NETMASK_UNKNOWN) != 0:
                reason = (library.pcap_geterr(handle) or b"?").decode(errors="replace")
                raise ConfigError(f"{flag} {expression!r}: {reason}")
        finally:
            library.pcap_close(handle)
        self._compiled = True

    @property
    def instructions(self) -> int:
        """Classic BPF instructions the expression compiled to."""
        return int(self._program.bf_len)

    def matches(self, frame: bytes, length: int) -> bool:
        """Does the packet (`frame`: its first bytes; `length`: on the wire) pass?"""
        if not self._compiled:
            raise ValueError(f"filter {self.expression!r} is closed")
        self._header.caplen = len(frame)
        self._header.len = length
        return bool(_libpcap().pcap_offline_filter(
            ctypes.byref(self._program), ctypes.byref(self._header), frame
        ))

    def close(self) -> None:
        if self._compiled:
            self._compiled = False
            _libpcap().pcap_freecode(ctypes.byref(self._program))

    def __enter__(self) -> PacketFilter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
