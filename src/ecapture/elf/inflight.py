"""SSL calls already running when the probes attach: found so their loss is said.

A uretprobe hooks the return address when the function is entered, and the
entry probe records the buffer; a call entered before the attach has neither,
so whatever it returns is never captured. Only blocking sockets keep a thread
inside an SSL call for long (a server waiting for a request, a writer whose
peer does not read); nginx, curl or CPython with a socket timeout poll outside
the call and re-enter it, so the next call is seen. Right after the attach we
look for such calls in every process that maps a hooked library, thread by
thread:

1. /proc/PID/task/TID/syscall (proc(5)) gives the syscall a blocked thread is
   in, its six arguments and the user sp and pc. Only socket reads and writes
   count: read, write, readv, writev, recvfrom, sendto, recvmsg, sendmsg (an
   OpenSSL socket BIO on Linux uses read/write, crypto/bio/bss_sock.c
   readsocket/writesocket), and poll/ppoll, where a blocking SSL call may wait
   for its socket (OpenSSL >= 3.2 BIO_wait); the fd (for poll the first socket
   of its pollfd array) must be a socket (/proc/PID/fd/N → "socket:[inode]").
2. The thread's user stack is read from sp up (/proc/PID/mem, at most
   STACK_SCAN_BYTES and never past the mapping that holds sp). An 8-byte word
   is a return address into an SSL call when it falls in the executable
   mapping of a hooked library at the end of a call instruction of one of the
   watched functions (SSL_read, SSL_read_ex, SSL_write, SSL_write_ex). Those
   ends are found once per library by disassembling each function (capstone,
   a linear sweep from its .dynsym st_value over its st_size: gcc puts no data
   in .text on x86-64, jump tables live in .rodata). Checking only that the
   bytes before a word decode as a call is weaker: `48 83 e8 01 48 83 c4`
   (sub $1,%rax; add ...) ends in `e8 01 48 83 c4`, a call rel32.
   SSL_read_ex calls ssl_read_internal, so its own frame holds such an
   address; SSL_do_handshake is not watched: a handshake caught in flight
   loses no plaintext.
3. Another tracer's uretprobe (a second ecapture, bpftrace) replaces the
   return address of the function it probes with the uretprobe trampoline,
   the first slot of the "[uprobes]" mapping (kernel/events/uprobes.c,
   prepare_uretprobe). Probing ssl_read_internal, which tail-calls ssl3_read,
   hides SSL_read_ex's return address: seen 22 times in 30 here while other
   captures ran. So the trampoline above library code (a return address right
   after a call instruction into the library's code) also counts, reported as
   HIDDEN_BY_URETPROBE, unless a return address of a no-data call
   (SSL_do_handshake, SSL_shutdown, SSL_peek...) lies between them.

Limits (a call missed is reported nowhere; a false report is a spurious
`lost`):
- A thread running, or runnable between two syscalls inside the SSL call
  (decrypting a record it already read), is not in a socket syscall: missed.
- A call that starts before the attach and returns between the attach and
  this scan: missed (the scan runs right after the attach; see the time it
  takes in the log line "in-flight scan").
- A watched function that tail-calls (jmp) instead of calling leaves no
  return address of its own; a symbol with st_size 0 gives no range: missed.
  Checked for Debian 12's OpenSSL 3.0 (SSL_read_ex calls at +9).
- A stale return address (a slot of a live frame not overwritten since an
  earlier SSL call) above a thread now blocked on another socket would be
  reported: exact call ends make it unlikely, not impossible. Under another
  tracer's uretprobe the check is weaker (any call into the library's code
  below the trampoline), and a stale no-data return address between them
  hides a real call.
- Only x86-64 (syscall numbers, call encodings); elsewhere the scan finds
  nothing and says so once at debug level.
- A mapping is matched to a hooked file by (device, inode) as maps prints
  them; where those differ from stat() of the file we opened (some overlay
  set-ups), that process is not scanned.
- A process we may not read (another user's without CAP_SYS_PTRACE, one
  that exits mid-scan) is skipped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from ecapture.elf.symbols import Executable
from ecapture.errors import EcaptureError

if TYPE_CHECKING:
    import capstone

log = logging.getLogger(__name__)

PROC = Path("/proc")
STACK_SCAN_BYTES = 32 << 10  # Python's SSL_read_ex frame sat 784 bytes above sp
POLL_FDS_READ = 16  # pollfd entries read from a poll/ppoll call
POLLFD = struct.Struct("<ihh")  # struct pollfd { int fd; short events, revents; }
WORD = 8
X86_64 = "EM_X86_64"

# x86-64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl).
SOCKET_IO_SYSCALLS_X86_64 = {
    0: "read", 1: "write", 19: "readv", 20: "writev", 44: "sendto", 45: "recvfrom",
    46: "sendmsg", 47: "recvmsg",
}
POLL_SYSCALLS_X86_64 = {7: "poll", 271: "ppoll"}
WATCHED_FUNCTIONS = ("SSL_read", "SSL_read_ex", "SSL_write", "SSL_write_ex")
# Calls that lose no plaintext when caught in flight (SSL_peek leaves the bytes
# for the SSL_read that follows).
NO_DATA_FUNCTIONS = ("SSL_do_handshake", "SSL_accept", "SSL_connect", "SSL_shutdown",
                     "SSL_peek", "SSL_peek_ex")
HIDDEN_BY_URETPROBE = "(a return address replaced by a uretprobe)"
UPROBES_MAPPING = "[uprobes]"  # the xol area; its first slot is the uretprobe trampoline
# Call encodings, shortest first after the common call rel32: ff d0 (call *%rax)
# is 2 bytes, ff 94 24 disp32 (call *disp32(%rsp)) 7, a REX prefix adds one.
CALL_LENGTHS = (5, 2, 3, 4, 6, 7, 8)


def _call_returns(executable: Executable, names: Iterable[str]) -> dict[int, str]:
    """File offset right after each call instruction of the functions `names`
    (those present with a size) -> the function's name."""
    returns: dict[int, str] = {}
    for name in names:
        if not executable.has(name) or not executable.size_of(name):
            continue
        vaddr = executable.address(name)
        code = executable.read_code(vaddr, executable.size_of(name))
        offset = executable.vaddr_to_offset(vaddr)
        for end in call_return_offsets(code):
            returns[offset + end] = name
    return returns


@dataclass(frozen=True, slots=True)
class WatchedLibrary:
    """A hooked file and the return addresses that tell which SSL call a thread is in."""

    path: Path  # readable by us (through /proc/PID/root when need be)
    device: tuple[int, int]  # (major, minor) of st_dev, as /proc/PID/maps prints it
    inode: int
    # file offset right after a call instruction of a watched function -> its name
    call_returns: Mapping[int, str]
    # the same for the calls that move no plaintext (a handshake, a shutdown, a peek)
    other_returns: Mapping[int, str]
    code: tuple[tuple[int, int], ...]  # [start, end) file offsets of executable segments

    @classmethod
    def open(cls, path: Path, names: Iterable[str] = WATCHED_FUNCTIONS,
             others: Iterable[str] = NO_DATA_FUNCTIONS) -> WatchedLibrary:
        """Disassemble `names` and `others` in `path` (x86-64 only; else none)."""
        executable = Executable(path)
        x86 = executable.machine == X86_64
        stat = path.stat()
        return cls(
            path, (os.major(stat.st_dev), os.minor(stat.st_dev)), stat.st_ino,
            MappingProxyType(_call_returns(executable, names) if x86 else {}),
            MappingProxyType(_call_returns(executable, others) if x86 else {}),
            tuple((segment.offset, segment.offset + segment.filesz)
                  for segment in executable.segments if segment.executable),
        )

    def in_code(self, offset: int) -> bool:
        return any(start <= offset < end for start, end in self.code)


@dataclass(frozen=True, slots=True)
class InFlightCall:
    """A thread found blocked inside an SSL call that began before the attach."""

    pid: int
    tid: int
    comm: str
    uid: int | None  # real uid (/proc/PID/status), as the BPF side filters on
    fd: int
    syscall: str  # what it is blocked in: "read", "poll", ...
    function: str  # the watched function whose frame is on its stack
    library: Path


@dataclass(frozen=True, slots=True)
class MemoryMapping:
    """One line of /proc/PID/maps."""

    start: int
    end: int
    executable: bool
    offset: int
    device: tuple[int, int]
    inode: int
    path: str


def parse_mappings(text: str) -> list[MemoryMapping]:
    """Every line of a maps file (proc(5): address perms offset dev inode pathname)."""
    mappings: list[MemoryMapping] = []
    for line in text.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 5:
            continue
        start, _, end = fields[0].partition("-")
        major, _, minor = fields[3].partition(":")
        mappings.append(MemoryMapping(
            int(start, 16), int(end, 16), "x" in fields[1], int(fields[2], 16),
            (int(major, 16), int(minor, 16)), int(fields[4]),
            fields[5] if len(fields) > 5 else "",
        ))
    return mappings


@dataclass(frozen=True, slots=True)
class BlockedSyscall:
    """A parsed /proc/PID/task/TID/syscall of a thread blocked in a syscall."""

    number: int
    arguments: tuple[int, ...]
    sp: int
    pc: int


def parse_syscall(text: str) -> BlockedSyscall | None:
    """None for "running" and for a thread not in a syscall ("-1 sp pc")."""
    fields = text.split()
    if len(fields) != 9 or fields[0] == "running":
        return None
    number = int(fields[0])
    if number < 0:
        return None
    values = tuple(int(field, 16) for field in fields[1:])
    return BlockedSyscall(number, values[:6], values[6], values[7])


@lru_cache(maxsize=1)
def _disassembler() -> capstone.Cs:
    import capstone  # loaded by the first scan that disassembles, not by importing this

    return capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)


def call_return_offsets(code: bytes) -> list[int]:
    """Offsets in `code` (a function's bytes) right after each call instruction.

    A linear sweep from the start; it stops at the first byte capstone cannot
    decode (what follows is not searched, so it can only miss, not invent)."""
    return [instruction.address + instruction.size
            for instruction in _disassembler().disasm(code, 0)
            if instruction.mnemonic == "call"]


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None  # exited, or not ours to read


def _real_uid(status: str | None) -> int | None:
    """The real uid of a /proc/PID/status text ("Uid:\treal effective saved fs")."""
    for line in (status or "").splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    return None


def _is_socket(proc: Path, pid: int, fd: int) -> bool:
    try:
        return os.readlink(proc / str(pid) / "fd" / str(fd)).startswith("socket:")
    except OSError:
        return False


def _read_memory(memory: int, address: int, size: int) -> bytes:
    try:
        return os.pread(memory, size, address)
    except OSError:
        return b""  # unmapped meanwhile, or the process exited


class InFlightScanner:
    """Finds threads blocked inside a watched SSL function (see the module docstring)."""

    def __init__(
        self,
        libraries: Sequence[WatchedLibrary],
        *,
        proc: Path = PROC,
        stack_bytes: int = STACK_SCAN_BYTES,
        machine: str | None = None,
    ) -> None:
        self.libraries = tuple(library for library in libraries if library.call_returns)
        self.proc = proc
        self.stack_bytes = stack_bytes
        self.machine = machine or platform.machine()
        self._call_sites: dict[tuple[Path, int], bool] = {}  # (file, offset) -> after a call
        # " INODE " as maps prints it, between the device and the path
        self._inode_markers = tuple({f" {library.inode} " for library in self.libraries})
        self.processes_scanned = 0
        self.threads_checked = 0
        self.stacks_read = 0

    def scan(self, pids: Iterable[int] | None = None) -> list[InFlightCall]:
        """In-flight calls of `pids` (default: every process but ours)."""
        if self.machine != "x86_64":
            log.debug("in-flight SSL calls are only looked for on x86-64, not %s", self.machine)
            return []
        if not self.libraries:
            return []
        if pids is None:
            own = os.getpid()
            pids = sorted(int(name) for name in os.listdir(self.proc)
                          if name.isdigit() and int(name) != own)
        found: list[InFlightCall] = []
        for pid in pids:
            found += self._scan_process(pid)
        return found

    def _library_mappings(
        self, mappings: Sequence[MemoryMapping]
    ) -> list[tuple[MemoryMapping, WatchedLibrary]]:
        matched: list[tuple[MemoryMapping, WatchedLibrary]] = []
        for mapping in mappings:
            if not mapping.executable or mapping.inode == 0:
                continue
            for library in self.libraries:
                if mapping.inode == library.inode and mapping.device == library.device:
                    matched.append((mapping, library))
        return matched

    def _scan_process(self, pid: int) -> list[InFlightCall]:
        process = self.proc / str(pid)
        maps = _read_text(process / "maps")
        if not maps:
            return []  # gone, unreadable, or a kernel thread
        if not any(marker in maps for marker in self._inode_markers):
            return []  # maps no hooked file: most processes, not worth parsing
        mappings = parse_mappings(maps)
        hooked = self._library_mappings(mappings)
        if not hooked:
            return []
        self.processes_scanned += 1
        try:
            tids = sorted(int(name) for name in os.listdir(process / "task"))
        except OSError:
            return []
        uid = _real_uid(_read_text(process / "status"))
        found: list[InFlightCall] = []
        memory: int | None = None
        try:
            for tid in tids:
                self.threads_checked += 1
                text = _read_text(process / "task" / str(tid) / "syscall")
                blocked = parse_syscall(text) if text else None
                if blocked is None:
                    continue
                if memory is None:
                    try:
                        memory = os.open(process / "mem", os.O_RDONLY | os.O_CLOEXEC)
                    except OSError:
                        return found
                fd, name = self._socket_of(pid, blocked, memory)
                if fd is None:
                    continue
                function = self._ssl_frame(blocked.sp, mappings, hooked, memory)
                log.debug("pid %d tid %d in %s(%d): %s", pid, tid, name, fd,
                          f"inside {function[0]}" if function else "no SSL call on its stack")
                if function is not None:
                    # the thread's own name, as bpf_get_current_comm() gives it
                    comm = (_read_text(process / "task" / str(tid) / "comm") or "").strip()
                    found.append(InFlightCall(pid, tid, comm, uid, fd, name, *function))
        finally:
            if memory is not None:
                os.close(memory)
        return found

    def _socket_of(
        self, pid: int, blocked: BlockedSyscall, memory: int
    ) -> tuple[int | None, str]:
        """The socket fd the thread waits on, if its syscall is socket I/O."""
        name = SOCKET_IO_SYSCALLS_X86_64.get(blocked.number)
        if name is not None:
            fd = blocked.arguments[0]
            return (fd, name) if fd < 1 << 31 and _is_socket(self.proc, pid, fd) else (None, name)
        name = POLL_SYSCALLS_X86_64.get(blocked.number, "")
        if not name:
            return None, name
        count = min(blocked.arguments[1], POLL_FDS_READ)
        raw = _read_memory(memory, blocked.arguments[0], count * POLLFD.size)
        for fd, _, _ in POLLFD.iter_unpack(raw[: len(raw) - len(raw) % POLLFD.size]):
            if fd >= 0 and _is_socket(self.proc, pid, fd):
                return fd, name
        return None, name

    def _ssl_frame(
        self,
        sp: int,
        mappings: Sequence[MemoryMapping],
        hooked: Sequence[tuple[MemoryMapping, WatchedLibrary]],
        memory: int,
    ) -> tuple[str, Path] | None:
        """The watched function the thread is in, judged from the stack above sp.

        A return address of a watched function decides. Failing that, a word
        that is the uretprobe trampoline (the kernel put it in place of a
        return address when a uretprobe's function was entered: another
        tracer's, since ours were not attached yet) above library code (a
        return address right after a call instruction into the library) counts
        too, unless a return address of a no-data call (SSL_do_handshake, ...)
        lies between them: ssl_read_internal tail-calls ssl3_read, so a
        uretprobe on it hides SSL_read_ex's own return address.
        """
        stack = next((m for m in mappings if m.start <= sp < m.end), None)
        if stack is None:
            return None
        trampoline = next((m.start for m in mappings if m.path == UPROBES_MAPPING), None)
        self.stacks_read += 1
        size = min(self.stack_bytes, stack.end - sp)
        data = _read_memory(memory, sp, size)
        if len(data) < size:
            log.debug("read %d of %d stack bytes at %#x", len(data), size, sp)
        inner: WatchedLibrary | None = None  # library code seen since sp or the last no-data call
        hidden: WatchedLibrary | None = None
        for (address,) in struct.iter_unpack("<Q", data[: len(data) - len(data) % WORD]):
            if address == trampoline:
                hidden = hidden or inner
                continue
            for mapping, library in hooked:
                if not mapping.start <= address < mapping.end:
                    continue
                offset = address - mapping.start + mapping.offset
                function = library.call_returns.get(offset)
                if function is not None:
                    return function, library.path
                if offset in library.other_returns:
                    inner = None
                elif inner is None and hidden is None and self._after_call(library, offset):
                    inner = library
        return (HIDDEN_BY_URETPROBE, hidden.path) if hidden is not None else None

    def _after_call(self, library: WatchedLibrary, offset: int) -> bool:
        """Do the bytes before `offset` in the file end with a call instruction?"""
        key = (library.path, offset)
        known = self._call_sites.get(key)
        if known is None:
            start = max(offset - max(CALL_LENGTHS), 0)
            try:
                with library.path.open("rb") as stream:
                    stream.seek(start)
                    code = stream.read(offset - start)
            except OSError:
                code = b""
            is_call, target = call_before(code, offset)
            known = self._call_sites[key] = is_call and (
                target is None or library.in_code(target))
        return known


def call_before(code: bytes, end: int) -> tuple[bool, int | None]:
    """Does `code` (the bytes before file offset `end`) end with a call instruction?
    (True, target offset) for a call rel32, (True, None) for an indirect call.

    Read backwards this is a guess (`48 83 e8 01 48 83 c4` ends in a call
    rel32): the target of a direct call must then land in the file's code."""
    disassembler = _disassembler()
    for length in CALL_LENGTHS:
        if length > len(code):
            continue
        tail = code[-length:]
        instruction = next(disassembler.disasm(tail, 0, 1), None)
        if instruction is None or instruction.size != length or instruction.mnemonic != "call":
            continue
        if tail[0] == 0xE8:
            return True, end + int.from_bytes(tail[1:5], "little", signed=True)
        return True, None
    return False, None


def in_flight_calls(
    library_paths: Iterable[Path], *, pids: Iterable[int] | None = None, proc: Path = PROC
) -> tuple[list[InFlightCall], InFlightScanner]:
    """Scan `pids` (default every process) for calls in flight in these libraries."""
    libraries: list[WatchedLibrary] = []
    for path in library_paths:
        with contextlib.suppress(OSError, EcaptureError):  # gone since prepare(): nothing to scan
            libraries.append(WatchedLibrary.open(path))
    scanner = InFlightScanner(libraries, proc=proc)
    return scanner.scan(pids), scanner
