"""Records of the shell objects (bpf/bash.bpf.c, bpf/zsh.bpf.c) and their decoders.

The structs are the shell block of bpf/events.h; tests/unit/shell/test_layout.py
checks the formats below against the BTF of both built objects. One decoder
per record kind, chosen by the kind every record starts with.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Mapping

import msgspec

from ecapture.errors import DecodeError
from ecapture.events import Clock

# struct shell_header: kind, pid, tid, uid, timestamp_ns, comm[16]
SHELL_HEADER = struct.Struct("<4IQ16s")
# struct shell_line_event after its header, up to line[]:
# tty, source, flags, _pad0, line_len, full_len, _pad1
LINE_FIELDS = struct.Struct("<64sBBxxIIxxxx")
LINE_HEADER_SIZE = SHELL_HEADER.size + LINE_FIELDS.size
# struct shell_status_event after its header: source, _pad0[3], status
STATUS_FIELDS = struct.Struct("<Bxxxi")
STATUS_SIZE = SHELL_HEADER.size + STATUS_FIELDS.size
KIND = struct.Struct("<I")

MAX_LINE_SIZE = 4096  # bpf/events.h MAX_LINE_SIZE
MAX_SHELL_TARGETS = 8  # bpf/events.h MAX_SHELL_TARGETS

LINE_FLAG_CONTINUATION = 1 << 0
LINE_FLAG_POSITION = 1 << 1
LINE_FLAG_TRUNCATED = 1 << 2


class ShellRecordKind(enum.IntEnum):
    LINE = 16
    STATUS = 17


class LineSource(enum.IntEnum):
    """Who read a line (bpf/events.h enum line_source)."""

    BASH = 1
    ZSH = 2
    READLINE = 3  # libreadline.so in another program (psql, sqlite3, gdb)


class ShellStat(enum.IntEnum):
    """Indexes of the shell objects' per-CPU `stats` map (enum shell_stat_index)."""

    RECORDS = 0
    RING_FULL_RECORDS = 1
    RING_FULL_BYTES = 2
    TRUNCATED_LINES = 3
    READ_FAULTS = 4


class ShellLine(msgspec.Struct, frozen=True, gc=False):
    """One line a shell (or a readline program) read from its user."""

    timestamp_ns: int  # ns since the epoch
    pid: int
    tid: int
    uid: int
    comm: str
    tty: str | None  # "pts/3", None when the process has no controlling terminal
    source: LineSource
    line: bytes  # without the line end
    continuation: bool  # read to complete a command begun on an earlier line
    position_known: bool  # the shell said whether this is a first line
    truncated: bool  # longer than the kernel copies (MAX_LINE_SIZE - 1 bytes)
    full_len: int = 0  # the line's length (more than len(line) when truncated); 0: len(line)


class ShellStatus(msgspec.Struct, frozen=True, gc=False):
    """The command a shell was running finished with `status`."""

    timestamp_ns: int
    pid: int
    tid: int
    uid: int
    comm: str
    source: LineSource
    status: int


ShellRecord = ShellLine | ShellStatus
Decoder = Callable[[bytes, Clock], object]


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", errors="replace")


def tty_name(raw: bytes) -> str | None:
    """The kernel's tty name as ps prints it: pseudo-terminals are "ptsN" in
    struct tty_struct (drivers/tty/pty.c names the driver "pts") and pts/N in /dev."""
    name = _text(raw)
    if not name:
        return None
    if name.startswith("pts") and name[3:].isdigit():
        return f"pts/{name[3:]}"
    return name


def _source(value: int) -> LineSource:
    try:
        return LineSource(value)
    except ValueError:
        raise DecodeError(f"shell record with unknown source {value}") from None


def _header(raw: bytes, size: int, what: str) -> tuple[int, int, int, int, int, bytes]:
    if len(raw) < size:
        raise DecodeError(f"{what} of {len(raw)} bytes is shorter than its {size}-byte header")
    kind, pid, tid, uid, ts, comm = SHELL_HEADER.unpack_from(raw)
    return kind, pid, tid, uid, ts, comm


def decode_line(raw: bytes, clock: Clock) -> ShellLine:
    _kind, pid, tid, uid, ts, comm = _header(raw, LINE_HEADER_SIZE, "shell_line_event")
    tty, source, flags, line_len, full_len = LINE_FIELDS.unpack_from(raw, SHELL_HEADER.size)
    end = LINE_HEADER_SIZE + line_len
    if line_len >= MAX_LINE_SIZE or len(raw) < end:
        raise DecodeError(
            f"shell_line_event claims {line_len} line bytes but carries "
            f"{len(raw) - LINE_HEADER_SIZE}"
        )
    return ShellLine(
        clock.to_epoch(ts), pid, tid, uid, _text(comm), tty_name(tty), _source(source),
        bytes(raw[LINE_HEADER_SIZE:end]), bool(flags & LINE_FLAG_CONTINUATION),
        bool(flags & LINE_FLAG_POSITION), bool(flags & LINE_FLAG_TRUNCATED),
        max(full_len, line_len),
    )


def decode_status(raw: bytes, clock: Clock) -> ShellStatus:
    _kind, pid, tid, uid, ts, comm = _header(raw, STATUS_SIZE, "shell_status_event")
    source, status = STATUS_FIELDS.unpack_from(raw, SHELL_HEADER.size)
    return ShellStatus(clock.to_epoch(ts), pid, tid, uid, _text(comm), _source(source), status)


DECODERS: Mapping[int, Decoder] = {
    ShellRecordKind.LINE: decode_line,
    ShellRecordKind.STATUS: decode_status,
}


def encode_line(line: ShellLine, clock: Clock) -> bytes:
    """The raw record the kernel would submit for `line` (tests and replays)."""
    flags = ((LINE_FLAG_CONTINUATION if line.continuation else 0)
             | (LINE_FLAG_POSITION if line.position_known else 0)
             | (LINE_FLAG_TRUNCATED if line.truncated else 0))
    tty = (line.tty or "").replace("pts/", "pts").encode()
    return (
        SHELL_HEADER.pack(ShellRecordKind.LINE, line.pid, line.tid, line.uid,
                          line.timestamp_ns - clock.offset_ns, line.comm.encode())
        + LINE_FIELDS.pack(tty, line.source, flags, len(line.line),
                           max(line.full_len, len(line.line))) + line.line
    )


def encode_status(status: ShellStatus, clock: Clock) -> bytes:
    return SHELL_HEADER.pack(
        ShellRecordKind.STATUS, status.pid, status.tid, status.uid,
        status.timestamp_ns - clock.offset_ns, status.comm.encode(),
    ) + STATUS_FIELDS.pack(status.source, status.status)
