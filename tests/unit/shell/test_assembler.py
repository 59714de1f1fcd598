"""The command assembler on record sequences the shells really produce
(tests/e2e/test_shell_capture.py records the same sequences from bash and zsh)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from ecapture.events import Clock, LossReason, Lost
from ecapture.processor.shell import MAX_COMMAND_LINES, Command, CommandAssembler
from ecapture.shell_events import (
    DECODERS,
    LineSource,
    ShellLine,
    ShellStatus,
    encode_line,
    encode_status,
)

PID = 4242
_clock = [1_000]


def line(text: bytes, *, continuation: bool = False, pid: int = PID,
         source: LineSource = LineSource.BASH, known: bool = True,
         truncated: bool = False, full_len: int = 0) -> ShellLine:
    _clock[0] += 1
    return ShellLine(_clock[0], pid, pid, 1000, "bash" if source is LineSource.BASH else "x",
                     "pts/3", source, text, continuation, known, truncated,
                     full_len or len(text))


def status(value: int, pid: int = PID, source: LineSource = LineSource.BASH) -> ShellStatus:
    _clock[0] += 1
    return ShellStatus(_clock[0], pid, pid, 1000, "bash", source, value)


def run(records: Sequence[object], errnumber: int | None = None) -> list[Command | Lost]:
    assembler = CommandAssembler(errnumber)
    out: list[Command | Lost] = []
    for record in records:
        out += assembler.feed(record)
    return out + assembler.flush()


def summary(items: Sequence[Command | Lost]) -> list[tuple[bytes, int | None]]:
    return [(item.line, item.retval) for item in items if isinstance(item, Command)]


# What bash sends for the four commands (nested execute_command
# returns are kept out by the kernel side: one status per command).
BASH_SESSION = [
    line(b"echo M1"), status(0),
    line(b"false && echo M2"), status(1),
    line(b"for i in 1 2; do"), line(b"echo $i; done", continuation=True), status(0),
    line(b"(exit 3); echo M3"), status(0),
]
EXPECTED = [
    (b"echo M1", 0), (b"false && echo M2", 1), (b"for i in 1 2; do\necho $i; done", 0),
    (b"(exit 3); echo M3", 0),
]


def test_bash_session() -> None:
    assert summary(run(BASH_SESSION)) == EXPECTED


def test_zsh_session_status_at_next_prompt_and_newlines() -> None:
    zsh = LineSource.ZSH
    records = [
        status(0, source=zsh),  # the first prompt: no command yet
        line(b"echo M1\n", source=zsh), status(0, source=zsh),
        line(b"false && echo M2\n", source=zsh), status(1, source=zsh),
        line(b"for i in 1 2; do\n", source=zsh),
        line(b"echo $i; done\n", source=zsh, continuation=True), status(0, source=zsh),
        line(b"(exit 3); echo M3\n", source=zsh), status(0, source=zsh),
        line(b"\n", source=zsh), status(0, source=zsh),  # an empty line
    ]
    items = run(records)
    assert summary(items) == EXPECTED
    assert {item.shell for item in items if isinstance(item, Command)} == {"zsh"}


def test_errnumber_keeps_only_that_status() -> None:
    assert summary(run(BASH_SESSION, errnumber=1)) == [(b"false && echo M2", 1)]
    assert summary(run(BASH_SESSION, errnumber=0)) == [
        EXPECTED[0], EXPECTED[2], EXPECTED[3]]


def test_status_belongs_to_the_command_it_follows() -> None:
    # A command that never reports (a comment) must not take the next status.
    records = [line(b"# a comment"), line(b"false"), status(1)]
    assert summary(run(records)) == [(b"# a comment", None), (b"false", 1)]


def test_here_document_is_one_command() -> None:
    records = [line(b"cat <<EOF"), line(b"hello", continuation=True),
               line(b"", continuation=True), line(b"EOF", continuation=True), status(0)]
    assert summary(run(records)) == [(b"cat <<EOF\nhello\n\nEOF", 0)]


def test_empty_first_lines_and_orphan_statuses_are_no_commands() -> None:
    assembler = CommandAssembler()
    assert assembler.feed(line(b"")) == []
    assert assembler.feed(line(b"   ")) == []
    assert assembler.feed(status(0)) == []
    assert assembler.counters.orphan_statuses == 1
    assert assembler.flush() == []


def test_processes_are_apart() -> None:
    records = [line(b"sleep 1", pid=1), line(b"true", pid=2), status(0, pid=2),
               status(5, pid=1)]
    items = run(records)
    assert [(item.pid, item.line, item.retval) for item in items
            if isinstance(item, Command)] == [(2, b"true", 0), (1, b"sleep 1", 5)]


def test_pending_at_exit_has_no_status() -> None:
    assert summary(run([line(b"echo done"), status(0), line(b"exit")])) == [
        (b"echo done", 0), (b"exit", None)]


def test_readline_program_lines_are_commands_at_once() -> None:
    assembler = CommandAssembler()
    items = assembler.feed(line(b"SELECT 1;", source=LineSource.READLINE, known=False))
    assert len(items) == 1
    command = items[0]
    assert isinstance(command, Command)
    assert (command.shell, command.line, command.retval) == ("x", b"SELECT 1;", None)


def test_a_continuation_without_its_first_line_starts_a_command() -> None:
    # The first line was read before the probes were attached.
    assert summary(run([line(b"echo $i; done", continuation=True), status(0)])) == [
        (b"echo $i; done", 0)]


def test_truncated_line_is_flagged_and_reported() -> None:
    items = run([line(b"x" * 4095, truncated=True, full_len=10_000), status(0)])
    lost = [item for item in items if isinstance(item, Lost)]
    assert [(item.reason, item.pid, item.bytes) for item in lost] == [
        (LossReason.KERNEL_LIMIT, PID, 10_000 - 4095)]
    commands = [item for item in items if isinstance(item, Command)]
    assert commands[0].truncated


def test_endless_continuation_is_bounded() -> None:
    records = [line(b"cat <<EOF")] + [
        line(b"x", continuation=True) for _ in range(MAX_COMMAND_LINES + 5)]
    commands = [item for item in run(records) if isinstance(item, Command)]
    assert [command.lines for command in commands] == [MAX_COMMAND_LINES, 6]


@pytest.mark.parametrize("record", BASH_SESSION[:4])
def test_records_round_trip_through_their_decoders(record: ShellLine | ShellStatus) -> None:
    clock = Clock(500)  # ns since boot = epoch ns - 500
    raw = (encode_line(record, clock) if isinstance(record, ShellLine)
           else encode_status(record, clock))
    kind = int.from_bytes(raw[:4], "little")
    assert DECODERS[kind](raw, clock) == record
