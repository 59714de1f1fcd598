"""The command assembler: line and status records in, one `Command` per command out.

Sans-IO, per process. A shell reads a command as one or more lines (a `for`
loop typed over two lines, a here-document) and then runs it; the kernel
side says which lines continue a command (bash's current_command_line_count,
zsh's continuation prompt) and sends one status when the command finished.
So:
- a first line starts a command; a continuation line joins the one pending;
- a status ends the pending command with that status; a status with no
  command pending (a script, the first prompt, an empty line's prompt) is
  no one's and is dropped;
- a first line while a command is still pending means the shell ran nothing
  for it (a comment, a syntax error): it ends with `retval` None;
- an empty first line runs nothing and is not a command;
- a line from a readline program (psql...) whose position is unknown is a
  command of its own at once, `retval` None: no status will follow.
Nothing waits on a timer: `flush()` at exit hands over what is pending.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec

from ecapture.events import LossReason, Lost
from ecapture.shell_events import LineSource, ShellLine, ShellStatus

# Lines one command may gather before it is handed over as it is: bounds
# the memory a shell that never runs what it reads can hold here.
MAX_COMMAND_LINES = 1024


class Command(msgspec.Struct, frozen=True, gc=False):
    """One command a user typed, with its exit status once known."""

    timestamp_ns: int  # when its first line was read
    pid: int
    tid: int
    uid: int
    comm: str
    tty: str | None
    shell: str  # "bash", "zsh", or the comm of a readline program
    line: bytes  # its lines joined by "\n"
    retval: int | None  # None: the shell reported no status for it
    lines: int = 1
    truncated: bool = False  # a line was longer than the kernel copies


@dataclass(slots=True)
class _Pending:
    first: ShellLine
    lines: list[bytes] = field(default_factory=list)
    truncated: bool = False


def _shell_name(line: ShellLine) -> str:
    if line.source is LineSource.BASH:
        return "bash"
    if line.source is LineSource.ZSH:
        return "zsh"
    return line.comm


def _strip_end(line: bytes) -> bytes:
    """zle hands the line over with its newline; readline without."""
    return line[:-1] if line.endswith(b"\n") else line


@dataclass(slots=True)
class AssemblerCounters:
    commands: int = 0
    filtered: int = 0  # dropped by -e/--errnumber
    orphan_statuses: int = 0  # statuses with no command pending


class CommandAssembler:
    """Assembles commands per process; `errnumber` keeps only those that returned it."""

    def __init__(self, errnumber: int | None = None) -> None:
        self.errnumber = errnumber
        self.counters = AssemblerCounters()
        self._pending: dict[int, _Pending] = {}

    def feed(self, record: object) -> list[Command | Lost]:
        out: list[Command | Lost] = []
        if isinstance(record, ShellLine):
            self._line(record, out)
        elif isinstance(record, ShellStatus):
            pending = self._pending.pop(record.pid, None)
            if pending is None:
                self.counters.orphan_statuses += 1
            else:
                self._emit(pending, record.status, out)
        return out

    def _line(self, record: ShellLine, out: list[Command | Lost]) -> None:
        text = _strip_end(record.line)
        if record.truncated:
            # The kernel copied MAX_LINE_SIZE - 1 bytes of a longer line.
            out.append(Lost(record.timestamp_ns, LossReason.KERNEL_LIMIT, 0,
                            max(record.full_len - len(record.line), 0),
                            pid=record.pid, comm=record.comm))
        pending = self._pending.get(record.pid)
        if not record.position_known:
            self._emit(_Pending(record, [text], record.truncated), None, out)
            return
        if record.continuation and pending is not None:
            pending.lines.append(text)
            pending.truncated |= record.truncated
            if len(pending.lines) >= MAX_COMMAND_LINES:
                del self._pending[record.pid]
                self._emit(pending, None, out)
            return
        if pending is not None:
            del self._pending[record.pid]
            self._emit(pending, None, out)  # the shell ran nothing for it
        if not text.strip() and not record.continuation:
            return  # an empty line at a prompt runs nothing
        self._pending[record.pid] = _Pending(record, [text], record.truncated)

    def _emit(self, pending: _Pending, retval: int | None, out: list[Command | Lost]) -> None:
        if self.errnumber is not None and retval != self.errnumber:
            self.counters.filtered += 1
            return
        first = pending.first
        self.counters.commands += 1
        out.append(Command(
            first.timestamp_ns, first.pid, first.tid, first.uid, first.comm, first.tty,
            _shell_name(first), b"\n".join(pending.lines), retval, len(pending.lines),
            pending.truncated,
        ))

    def expire(self, now_ns: int) -> Sequence[Command | Lost]:
        """Nothing ends on a timer: a command ends with its status or the next one."""
        return ()

    def flush(self) -> list[Command | Lost]:
        """Every pending command, its status unknown (the shell exited, or we stop)."""
        out: list[Command | Lost] = []
        pending, self._pending = self._pending, {}
        for entry in sorted(pending.values(), key=lambda entry: entry.first.timestamp_ns):
            self._emit(entry, None, out)
        return out
