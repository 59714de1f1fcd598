"""What `ecapture bash` and `ecapture zsh` share: config, records, processor, output.

A shell module reads line and status records (bpf/events.h, shell block),
the command assembler (processor/shell.py) turns them into `Command` items,
and the renderers below show them: JSON `type: "command"`, text one line
per command. The `-e/--errnumber N` filter keeps only commands that returned N.
"""

from __future__ import annotations

import argparse
import functools
import os
import pwd
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import msgspec

from ecapture.config import GlobalConfig
from ecapture.errors import ConfigError, LibraryNotFound
from ecapture.modules.base import Module
from ecapture.modules.parts import Decoder, StatsLayout
from ecapture.output.render import json_renderer, text_renderer
from ecapture.processor.shell import Command, CommandAssembler
from ecapture.shell_events import DECODERS, ShellStat

# The writers call the renderers below: whichever format runs has loaded its own.
if TYPE_CHECKING:
    from ecapture.output.jsonl import JsonLinesWriter
    from ecapture.output.text import TextWriter
    from ecapture.processor.interface import RecordProcessor

SHELL_STATS = StatsLayout(
    "stats",
    {ShellStat.RECORDS: "submitted", ShellStat.RING_FULL_RECORDS: "lost",
     ShellStat.TRUNCATED_LINES: "lines cut", ShellStat.READ_FAULTS: "read faults"},
    records=ShellStat.RECORDS, ring_full_records=ShellStat.RING_FULL_RECORDS,
    ring_full_bytes=ShellStat.RING_FULL_BYTES,
)
# Commands are few: a small ring is plenty (--mapsize still wins when given).
SHELL_MAPSIZE_KIB = 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class ShellConfig(GlobalConfig):
    errnumber: int | None = None  # keep only commands that returned this


def find_program(given: str | None, name: str, flag: str) -> Path:
    """The shell binary: `given`, else `name` on PATH; resolved (uprobes need the file)."""
    if given is not None:
        path = Path(given)
        if not path.is_file():
            raise LibraryNotFound(f"{flag} {given}: no such file")
        return path.resolve()
    found = shutil.which(name)
    if found is None:
        raise LibraryNotFound(f"{name} is not installed (not on PATH); pass {flag} PATH")
    return Path(found).resolve()


class ShellModule(Module):
    """Base of the shell modules: lines + statuses → commands."""

    config_type: ClassVar[type[GlobalConfig]] = ShellConfig
    stats_layout: ClassVar[StatsLayout | None] = SHELL_STATS
    event_types: ClassVar[tuple[type, ...]] = (Command,)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "-e", "--errnumber", type=int, default=None, metavar="N",
            help="show only commands that returned exit status N",
        )

    @classmethod
    def shell_arguments(cls, args: argparse.Namespace, common: dict[str, Any]) -> dict[str, Any]:
        if "mapsize" not in vars(args):  # the global default is sized for TLS traffic
            common = {**common, "mapsize_kib": min(common["mapsize_kib"], SHELL_MAPSIZE_KIB)}
        return {**common, "errnumber": args.errnumber}

    @property
    def errnumber(self) -> int | None:
        config = self.config
        return config.errnumber if isinstance(config, ShellConfig) else None

    def decoders(self) -> Mapping[int, Decoder] | None:
        return DECODERS

    def make_processor(self) -> RecordProcessor | None:
        self._assembler = CommandAssembler(self.errnumber)
        return self._assembler

    def summary_counts(self) -> str:
        assembler: CommandAssembler | None = getattr(self, "_assembler", None)
        if assembler is None or self._pipeline is None:
            return "nothing read"
        counters = assembler.counters
        shown = f"{counters.commands} command{'' if counters.commands == 1 else 's'}"
        if self.errnumber is not None:
            shown += f" ({counters.filtered} more did not return {self.errnumber})"
        return f"{self._pipeline.counters.records} records, {shown}"


# -- output -----------------------------------------------------------------------


class CommandEvent(msgspec.Struct):
    type: Literal["command"]
    module: str
    ts: int
    pid: int
    tid: int
    comm: str
    uid: int
    tty: str | None
    shell: str
    line: str  # UTF-8; an invalid byte shows as U+FFFD
    retval: int | None  # null: the shell reported no status (yet)
    lines: int  # lines the command was typed over
    truncated: bool  # a line was longer than the kernel copies


@json_renderer(Command)
def _command_json(writer: JsonLinesWriter, item: Command) -> CommandEvent:
    return CommandEvent(
        "command", writer.module, item.timestamp_ns, item.pid, item.tid, item.comm, item.uid,
        item.tty, item.shell, item.line.decode("utf-8", errors="replace"), item.retval,
        item.lines, item.truncated,
    )


@functools.lru_cache(maxsize=256)
def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


@text_renderer(Command)
def _command_text(writer: TextWriter, item: Command) -> str:
    from ecapture.output.text import escape_text  # loaded with the writer

    colors = writer.colors
    if item.retval is None:
        status = "status ?"
    elif item.retval == 0:
        status = f"{colors.good}status 0{colors.reset}"
    else:
        status = f"{colors.bad}status {item.retval}{colors.reset}"
    tty = f" {item.tty}" if item.tty else ""
    cut = " [cut]" if item.truncated else ""
    # One line per command: the line breaks of a multi-line command show as \n.
    line = escape_text(item.line).replace("\n", "\\n")
    return (f"{writer.time_text(item.timestamp_ns)} {user_name(item.uid)} pid {item.pid}{tty} "
            f"{item.shell} {status}{cut}: {line}\n")


def check_pid(pid: int) -> None:
    if pid and not os.path.exists(f"/proc/{pid}"):
        raise ConfigError(f"-p {pid}: no such process")
