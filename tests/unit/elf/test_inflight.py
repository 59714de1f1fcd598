"""The in-flight scan on fake /proc trees: maps, syscall, fd links, comm, status and a
sparse `mem` file holding stack bytes at the stack pointer's offset."""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ecapture.elf.inflight import (
    HIDDEN_BY_URETPROBE,
    BlockedSyscall,
    InFlightCall,
    InFlightScanner,
    WatchedLibrary,
    call_before,
    call_return_offsets,
    in_flight_calls,
    parse_mappings,
    parse_syscall,
)
from ecapture.elf.symbols import Executable

from .conftest import LIBSSL3, compile_c, require_file, run_tool

DATA = Path(__file__).resolve().parents[2] / "data" / "inflight"
LIBRARY_BASE = 0x7F00_0000_0000
STACK_START, STACK_END = 0x10000, 0x30000
SP = 0x20000
PID = 4242
SOCKET_FD, PIPE_FD = 5, 6
READ, NANOSLEEP, ACCEPT, POLL = 0, 35, 43, 7
TRAMPOLINE = 0x7FFFFFFFE000  # where the kernel maps [uprobes] (x86-64)
# An SSL library in small: a data call, a no-data call and an internal
# function, each calling a helper (a real call, so each has a return address).
SSL_LIKE_C = r"""
__attribute__((noinline)) long helper(long a) { return a * 5 + 3; }
__attribute__((noinline)) long data_call(long a) { return helper(a) + 1; }
__attribute__((noinline)) long handshake_call(long a) { return helper(a) - 1; }
__attribute__((noinline)) long internal_call(long a) { return helper(a) ^ 7; }
"""
OBJDUMP_CALL = re.compile(r"^\s*([0-9a-f]+):\t((?:[0-9a-f]{2} )+)\s*\tcall")


def call_returns(path: Path, vaddr: int, size: int) -> list[int]:
    """Virtual addresses right after each call objdump decodes in [vaddr, vaddr + size)."""
    text = run_tool(
        "objdump", "-d", f"--start-address={vaddr:#x}", f"--stop-address={vaddr + size:#x}", path
    )
    return [int(m[1], 16) + len(m[2].split()) for m in map(OBJDUMP_CALL.match, text.splitlines())
            if m is not None]


@dataclass
class FakeProcess:
    """What the scanner reads of one process, written under tmp_path/proc/PID."""

    library: Path
    pid: int = PID
    syscall: str = ""
    stack: bytes = b""
    device: str | None = None  # maps' dev field; default: the library's own
    fds: dict[int, str] = field(default_factory=lambda: {SOCKET_FD: "socket:[77]",
                                                         PIPE_FD: "pipe:[78]"})
    memory: dict[int, bytes] = field(default_factory=dict)
    threads: dict[int, str] = field(default_factory=dict)  # extra tid -> syscall text
    segment: tuple[int, int] | None = None  # (offset, size) mapped; default: from the ELF

    def executable_mapping(self) -> tuple[int, int]:
        """(file offset, size) of the library's executable PT_LOAD, page-aligned."""
        if self.segment is not None:
            return self.segment
        segment = next(s for s in Executable(self.library).segments if s.executable)
        start = segment.offset & ~0xFFF
        return start, (segment.offset + segment.filesz - start + 0xFFF) & ~0xFFF

    def address_of(self, file_offset: int) -> int:
        start, _ = self.executable_mapping()
        return LIBRARY_BASE + file_offset - start

    def write(self, proc: Path) -> None:
        stat = self.library.stat()
        device = self.device or f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}"
        offset, size = self.executable_mapping()
        root = proc / str(self.pid)
        (root / "task").mkdir(parents=True)
        (root / "fd").mkdir()
        (root / "maps").write_text(
            f"{LIBRARY_BASE - 0x1000:x}-{LIBRARY_BASE:x} r--p 00000000 {device} {stat.st_ino}"
            f"                     {self.library}\n"
            f"{LIBRARY_BASE:x}-{LIBRARY_BASE + size:x} r-xp {offset:08x} {device} {stat.st_ino}"
            f"                     {self.library}\n"
            f"{STACK_START:x}-{STACK_END:x} rw-p 00000000 00:00 0          [stack]\n"
            f"{TRAMPOLINE:x}-{TRAMPOLINE + 0x1000:x} r-xp 00000000 00:00 0      [uprobes]\n"
        )
        (root / "status").write_text("Name:\tserver\nUid:\t1000\t1000\t1000\t1000\n")
        for fd, target in self.fds.items():
            os.symlink(target, root / "fd" / str(fd))
        for tid, text in {self.pid: self.syscall, **self.threads}.items():
            (root / "task" / str(tid)).mkdir()
            (root / "task" / str(tid) / "syscall").write_text(text)
            (root / "task" / str(tid) / "comm").write_text(
                "server\n" if tid == self.pid else "worker\n")
        with (root / "mem").open("wb") as memory:
            for address, data in {SP: self.stack, **self.memory}.items():
                memory.seek(address)
                memory.write(data)


def syscall_text(number: int, *arguments: int, sp: int = SP, pc: int = 0x7F00DEAD0000) -> str:
    values = [*arguments, *[0] * (6 - len(arguments)), sp, pc]
    return f"{number} " + " ".join(f"{value:#x}" for value in values) + "\n"


def words(*values: int) -> bytes:
    return struct.pack(f"<{len(values)}Q", *values)


@pytest.fixture
def demo(shared_library: Path) -> tuple[WatchedLibrary, int]:
    """The demo library watched for demo_recv, and the file offset after its call."""
    watched = WatchedLibrary.open(shared_library, ("demo_recv",))
    executable = Executable(shared_library)
    returns = call_returns(shared_library, executable.address("demo_recv"),
                           executable.size_of("demo_recv"))
    assert returns, "demo_recv calls demo_send"
    return watched, executable.vaddr_to_offset(returns[0])


def scan(tmp_path: Path, process: FakeProcess, library: WatchedLibrary,
         **options: int) -> list[InFlightCall]:
    proc = tmp_path / "proc"
    process.write(proc)
    return InFlightScanner([library], proc=proc, machine="x86_64", **options).scan([process.pid])


def test_thread_blocked_reading_a_socket_inside_the_watched_function(
    tmp_path: Path, shared_library: Path, demo: tuple[WatchedLibrary, int]
) -> None:
    library, return_offset = demo
    process = FakeProcess(shared_library, syscall=syscall_text(READ, SOCKET_FD, 0x5000, 5))
    stack = words(0x1234, process.address_of(return_offset) - 1,  # not after a call
                  0x99, process.address_of(return_offset), 0)
    process.stack = stack
    assert scan(tmp_path, process, library) == [
        InFlightCall(PID, PID, "server", 1000, SOCKET_FD, "read", "demo_recv", shared_library)
    ]


@pytest.mark.parametrize(
    "syscall",
    [
        syscall_text(READ, PIPE_FD, 0x5000, 5),  # not a socket
        syscall_text(READ, 9, 0x5000, 5),  # no such fd
        syscall_text(NANOSLEEP, 0x5000, 0),  # not socket I/O
        syscall_text(ACCEPT, SOCKET_FD, 0, 0),  # a listening server
        "running\n",
        f"-1 {SP:#x} 0x7f00dead0000\n",  # not in a syscall
    ],
    ids=["pipe", "closed-fd", "nanosleep", "accept", "running", "no-syscall"],
)
def test_threads_not_in_socket_io_are_not_reported(
    tmp_path: Path, shared_library: Path, demo: tuple[WatchedLibrary, int], syscall: str
) -> None:
    library, return_offset = demo
    process = FakeProcess(shared_library, syscall=syscall)
    process.stack = words(process.address_of(return_offset))
    assert scan(tmp_path, process, library) == []


def test_a_return_address_outside_the_watched_functions_is_not_an_ssl_call(
    tmp_path: Path, shared_library: Path
) -> None:
    """demo_recv's return address, but only demo_send is watched (as SSL_do_handshake
    is not: a handshake in flight loses no plaintext)."""
    executable = Executable(shared_library)
    returns = call_returns(shared_library, executable.address("demo_recv"),
                           executable.size_of("demo_recv"))
    library = WatchedLibrary.open(shared_library, ("demo_send",))
    process = FakeProcess(shared_library, syscall=syscall_text(READ, SOCKET_FD, 0x5000, 5))
    process.stack = words(process.address_of(executable.vaddr_to_offset(returns[0])))
    assert scan(tmp_path, process, library) == []


def test_a_word_inside_the_function_but_not_after_a_call_is_ignored(
    tmp_path: Path, shared_library: Path, demo: tuple[WatchedLibrary, int]
) -> None:
    """Every offset of demo_recv but the ends of its calls (as objdump decodes them)."""
    library, _ = demo
    executable = Executable(shared_library)
    call_ends = {executable.vaddr_to_offset(end) for end in call_returns(
        shared_library, executable.address("demo_recv"), executable.size_of("demo_recv"))}
    start = executable.offset_of("demo_recv")
    process = FakeProcess(shared_library, syscall=syscall_text(READ, SOCKET_FD, 0x5000, 5))
    process.stack = words(*(process.address_of(offset)
                            for offset in range(start, start + executable.size_of("demo_recv"))
                            if offset not in call_ends))
    assert scan(tmp_path, process, library) == []


def test_the_stack_is_read_up_to_the_bound_only(
    tmp_path: Path, shared_library: Path, demo: tuple[WatchedLibrary, int]
) -> None:
    library, return_offset = demo
    process = FakeProcess(shared_library, syscall=syscall_text(READ, SOCKET_FD, 0x5000, 5))
    process.stack = bytes(4096) + words(process.address_of(return_offset))
    assert scan(tmp_path, process, library, stack_bytes=4096) == []
    assert len(scan(tmp_path / "again", process, library, stack_bytes=4104)) == 1


def test_the_stack_is_not_read_past_its_mapping(
    tmp_path: Path, shared_library: Path, demo: tuple[WatchedLibrary, int]
) -> None:
    """The word sits right above the mapping holding sp: another mapping's bytes."""
    library, return_offset = demo
    process = FakeProcess(shared_library, syscall=syscall_text(READ, SOCKET_FD, 0x5000, 5))
    process.stack = bytes(STACK_END - SP) + words(process.address_of(return_offset))
    assert scan(tmp_path, process, library) == []


def test_poll_on_a_socket_is_found_through_its_pollfd_array(
    tmp_path: Path, shared_library: Path, demo: tuple[WatchedLibrary, int]
) -> None:
    library, return_offset = demo
    pollfds = 0x18000
    process = FakeProcess(shared_library, syscall=syscall_text(POLL, pollfds, 2, 1000))
    process.memory = {pollfds: struct.pack("<ihhihh", PIPE_FD, 1, 0, SOCKET_FD, 1, 0)}
    process.stack = words(process.address_of(return_offset))
    [call] = scan(tmp_path, process, library)
    assert (call.fd, call.syscall) == (SOCKET_FD, "poll")


def test_every_thread_is_checked(
    tmp_path: Path, shared_library: Path, demo: tuple[WatchedLibrary, int]
) -> None:
    library, return_offset = demo
    process = FakeProcess(shared_library, syscall=syscall_text(NANOSLEEP, 0x5000, 0),
                          threads={PID + 1: syscall_text(READ, SOCKET_FD, 0x5000, 5)})
    process.stack = words(process.address_of(return_offset))
    assert [(call.pid, call.tid, call.comm) for call in scan(tmp_path, process, library)] == [
        (PID, PID + 1, "worker")]


def test_a_mapping_of_another_file_with_the_same_inode_is_not_the_library(
    tmp_path: Path, shared_library: Path, demo: tuple[WatchedLibrary, int]
) -> None:
    library, return_offset = demo
    process = FakeProcess(shared_library, syscall=syscall_text(READ, SOCKET_FD, 0x5000, 5),
                          device="ff:7f")
    process.stack = words(process.address_of(return_offset))
    assert scan(tmp_path, process, library) == []


def test_only_x86_64_is_scanned(
    tmp_path: Path, shared_library: Path, demo: tuple[WatchedLibrary, int]
) -> None:
    library, return_offset = demo
    process = FakeProcess(shared_library, syscall=syscall_text(READ, SOCKET_FD, 0x5000, 5))
    process.stack = words(process.address_of(return_offset))
    process.write(tmp_path / "proc")
    scanner = InFlightScanner([library], proc=tmp_path / "proc", machine="aarch64")
    assert scanner.scan([PID]) == []


def test_vanished_and_unrelated_processes_are_skipped(
    tmp_path: Path, shared_library: Path, demo: tuple[WatchedLibrary, int]
) -> None:
    library, _ = demo
    proc = tmp_path / "proc"
    (proc / "17").mkdir(parents=True)
    (proc / "17" / "maps").write_text("")  # a kernel thread
    scanner = InFlightScanner([library], proc=proc, machine="x86_64")
    assert scanner.scan([17, 18]) == []
    assert scanner.processes_scanned == 0


def test_recorded_python_server_blocked_in_ssl_read_ex(tmp_path: Path) -> None:
    """maps, syscall and 4 KiB of stack of python3 blocked in `ssl_socket.recv()`
    (Debian 12, OpenSSL 3.0.x libssl build id c0b99590...): SSL_read_ex's frame
    is 784 bytes above sp."""
    libssl = require_file(LIBSSL3)
    if Executable(libssl).build_id != "c0b9959017cf64b03131964573944fc72958bb2b":
        pytest.skip(f"the recording is of another build of {libssl}")
    maps = (DATA / "python_ssl_read.maps").read_text()
    stat = libssl.stat()
    device = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}"
    recorded = next(line for line in maps.splitlines() if line.endswith("libssl.so.3"))
    _, _, _, recorded_device, recorded_inode = recorded.split()[:5]
    proc = tmp_path / "proc" / "900"
    (proc / "task" / "900").mkdir(parents=True)
    (proc / "fd").mkdir()
    # The stack moves to a low address (a file cannot be 128 TiB long); the
    # words on it, the libraries' addresses, stay as recorded.
    stack_line = next(line for line in maps.splitlines() if line.endswith("[stack]"))
    stack_start, stack_end = (int(value, 16) for value in stack_line.split()[0].split("-"))
    syscall = (DATA / "python_ssl_read.syscall").read_text()
    sp = int(syscall.split()[-2], 16) - stack_start + STACK_START
    syscall = " ".join([*syscall.split()[:-2], f"{sp:#x}", syscall.split()[-1]])
    maps = maps.replace(stack_line.split()[0],
                        f"{STACK_START:x}-{STACK_START + stack_end - stack_start:x}")
    (proc / "maps").write_text(maps.replace(f"{recorded_device} {recorded_inode}",
                                            f"{device} {stat.st_ino}"))
    (proc / "task" / "900" / "syscall").write_text(syscall)
    (proc / "task" / "900" / "comm").write_text("python3\n")
    os.symlink("socket:[1234]", proc / "fd" / "4")
    blocked = parse_syscall(syscall)
    assert blocked is not None and blocked.arguments[0] == 4
    with (proc / "mem").open("wb") as memory:
        memory.seek(sp)
        memory.write((DATA / "python_ssl_read.stack.bin").read_bytes())
    calls, scanner = in_flight_calls([libssl], pids=[900], proc=tmp_path / "proc")
    assert [(call.pid, call.comm, call.fd, call.syscall, call.function) for call in calls] == [
        (900, "python3", 4, "read", "SSL_read_ex")]
    assert scanner.stacks_read == 1


@pytest.fixture(scope="session")
def ssl_like(build_dir: Path) -> Path:
    return compile_c(build_dir, "libssl-like.so", SSL_LIKE_C, "-shared", "-fPIC")


def first_call_return(library: Path, name: str) -> int:
    executable = Executable(library)
    return executable.vaddr_to_offset(call_returns(
        library, executable.address(name), executable.size_of(name))[0])


@pytest.mark.parametrize(
    ("frames", "found"),
    [
        # innermost first: library code under the trampoline is an SSL call we cannot name
        (["internal_call", "trampoline"], [HIDDEN_BY_URETPROBE]),
        (["internal_call", "trampoline", "data_call"], ["data_call"]),
        # a handshake under another tracer's uretprobe moves no plaintext
        (["internal_call", "handshake_call", "trampoline"], []),
        (["trampoline"], []),  # a uretprobe outside the library
        (["trampoline", "internal_call"], []),  # library code only outside it
        (["internal_call@start", "trampoline"], []),  # not after a call
    ],
)
def test_a_return_address_hidden_by_another_tracers_uretprobe(
    tmp_path: Path, ssl_like: Path, frames: list[str], found: list[str]
) -> None:
    library = WatchedLibrary.open(ssl_like, ("data_call",), ("handshake_call",))
    process = FakeProcess(ssl_like, syscall=syscall_text(READ, SOCKET_FD, 0x5000, 5))
    executable = Executable(ssl_like)
    stack = []
    for frame in frames:
        if frame == "trampoline":
            stack.append(TRAMPOLINE)
        elif frame.endswith("@start"):
            stack.append(process.address_of(executable.offset_of(frame.removesuffix("@start"))))
        else:
            stack.append(process.address_of(first_call_return(ssl_like, frame)))
    process.stack = words(0x1234, *stack)
    assert [call.function for call in scan(tmp_path, process, library)] == found


# A real call (rel32 to offset 36, in the code) ending at 26, then `sub $1,%rax;
# add $8,%rsp`, whose bytes before offset 33 read backwards as a call rel32.
RAW_CODE = bytes(16) + bytes.fromhex("be02000000 e80a000000 4883e801 4883c408 c3") + bytes(64)


@pytest.mark.parametrize(("inner", "found"), [(26, [HIDDEN_BY_URETPROBE]), (33, [])])
def test_library_code_under_the_trampoline_must_follow_a_real_call(
    tmp_path: Path, inner: int, found: list[str]
) -> None:
    raw = tmp_path / "code.bin"
    raw.write_bytes(RAW_CODE)
    stat = raw.stat()
    library = WatchedLibrary(raw, (os.major(stat.st_dev), os.minor(stat.st_dev)), stat.st_ino,
                             {90: "data_call"}, {}, ((0, len(RAW_CODE)),))
    process = FakeProcess(raw, syscall=syscall_text(READ, SOCKET_FD, 0x5000, 5),
                          segment=(0, 0x1000))
    process.stack = words(process.address_of(inner), TRAMPOLINE)
    assert [call.function for call in scan(tmp_path, process, library)] == found


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (bytes.fromhex("90 e8 10 00 00 00"), (True, 0x1000 + 0x10)),  # call rel32
        (bytes.fromhex("e8 f0 ff ff ff"), (True, 0x1000 - 0x10)),
        # sub $1,%rax; add ...: read backwards, a call rel32 far outside any code
        (bytes.fromhex("48 83 e8 01 48 83 c4"), (True, 0x1000 - 0x3B7CB7FF)),
        (bytes.fromhex("ff d0"), (True, None)),  # call *%rax
        (bytes.fromhex("41 ff d3"), (True, None)),  # call *%r11
        (bytes.fromhex("ff 94 24 80 00 00 00"), (True, None)),  # call *0x80(%rsp)
        (bytes.fromhex("48 89 c7"), (False, None)),  # mov %rax,%rdi
        (bytes.fromhex("c3"), (False, None)),
        (b"", (False, None)),
    ],
)
def test_call_before(code: bytes, expected: tuple[bool, int | None]) -> None:
    assert call_before(code, 0x1000) == expected


def test_parse_syscall() -> None:
    assert parse_syscall("0 0x4 0x56 0x5 0x0 0x0 0x0 0x7ffd401607a8 0x7f06141162ad\n") == \
        BlockedSyscall(0, (4, 0x56, 5, 0, 0, 0), 0x7FFD401607A8, 0x7F06141162AD)
    assert parse_syscall("running\n") is None
    assert parse_syscall("-1 0x7ffd401607a8 0x7f06141162ad\n") is None


def test_parse_mappings() -> None:
    [library, anonymous] = parse_mappings(
        "7f0613890000-7f06138ed000 r-xp 0001f000 fe:00 326798    /usr/lib/libssl.so.3\n"
        "7ffd40142000-7ffd40163000 rw-p 00000000 00:00 0\n"
    )
    assert (library.start, library.end, library.executable, library.offset) == (
        0x7F0613890000, 0x7F06138ED000, True, 0x1F000)
    assert (library.device, library.inode, library.path) == ((0xFE, 0), 326798,
                                                              "/usr/lib/libssl.so.3")
    assert (anonymous.executable, anonymous.inode, anonymous.path) == (False, 0, "")


def test_call_returns_match_objdump(shared_library: Path) -> None:
    executable = Executable(shared_library)
    vaddr, size = executable.address("demo_recv"), executable.size_of("demo_recv")
    assert [vaddr + end for end in call_return_offsets(executable.read_code(vaddr, size))] == \
        call_returns(shared_library, vaddr, size)


@pytest.mark.parametrize("name", ["SSL_read", "SSL_read_ex", "SSL_write", "SSL_write_ex"])
def test_libssl_call_returns_match_objdump(name: str) -> None:
    libssl = require_file(LIBSSL3)
    executable = Executable(libssl)
    vaddr, size = executable.address(name), executable.size_of(name)
    expected = call_returns(libssl, vaddr, size)
    assert expected, f"{name} makes a call of its own (no tail call)"
    watched = WatchedLibrary.open(libssl, (name,))
    assert sorted(watched.call_returns) == [executable.vaddr_to_offset(end) for end in expected]


def test_bytes_that_only_end_like_a_call_are_not_a_call_site() -> None:
    """`sub $1,%rax; add $8,%rsp`: its last five bytes read `e8 01 48 83 c4`, a
    call rel32, when decoded backwards; the forward sweep sees no call."""
    assert call_return_offsets(bytes.fromhex("4883e801 4883c408 c3")) == []
    assert call_return_offsets(bytes.fromhex("be02000000 e80affffff c3")) == [10]
