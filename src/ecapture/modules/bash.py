"""`ecapture bash`: the commands of interactive bash, and the lines that
programs linked with libreadline read (psql, sqlite3, gdb).

Hooks (bpf/bash.bpf.c): readline_internal_teardown in bash (readline is built
into Debian's bash and exported), readline's return in each libreadline.so;
execute_command in bash for the exit status. Every symbol is looked up in the file itself:
nothing depends on a version number.
"""

from __future__ import annotations

import argparse
import logging
import os
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ecapture.config import GlobalConfig
from ecapture.elf.discovery import PROC, parse_maps
from ecapture.elf.ldcache import find_library
from ecapture.elf.symbols import Executable
from ecapture.elf.variables import variable_addresses
from ecapture.errors import ConfigError, LibraryNotFound
from ecapture.modules.parts import AttachStep, BpfObject, ProbeSpec
from ecapture.modules.registry import register
from ecapture.modules.shell import ShellConfig, ShellModule, check_pid, find_program
from ecapture.shell_events import MAX_SHELL_TARGETS, LineSource

log = logging.getLogger(__name__)

TEARDOWN = "readline_internal_teardown"
READLINE = "readline"
LINE_BUFFER = "rl_line_buffer"
LINE_COUNT = "current_command_line_count"
EXECUTE = "execute_command"
READLINE_SONAME = "libreadline.so.8"
READLINE_PREFIX = "libreadline.so"


@dataclass(frozen=True, slots=True, kw_only=True)
class BashConfig(ShellConfig):
    """Configuration of `ecapture bash`."""

    bash: str | None = None  # None: bash on PATH
    readlineso: str | None = None  # None: the system libreadline and those processes map


@dataclass(frozen=True, slots=True)
class ReadlineTarget:
    """A file whose readline we probe: bash's built-in one at the entry of
    readline_internal_teardown (with its globals), a library's at readline's return."""

    path: Path
    source: LineSource
    probe_offset: int
    teardown_vaddr: int = 0
    line_buffer_vaddr: int = 0
    line_count_vaddr: int = 0  # 0: the file cannot tell first lines from continuations


def bash_readline(path: Path) -> ReadlineTarget | None:
    """bash's built-in readline, or None when this bash uses a library's."""
    executable = Executable(path)
    if not executable.has(TEARDOWN):
        return None
    globals_ = variable_addresses(path, (LINE_BUFFER, LINE_COUNT))
    if LINE_BUFFER not in globals_:
        return None
    return ReadlineTarget(
        path, LineSource.BASH, executable.offset_of(TEARDOWN), executable.address(TEARDOWN),
        globals_[LINE_BUFFER], globals_.get(LINE_COUNT, 0),
    )


def library_readline(path: Path) -> ReadlineTarget | None:
    executable = Executable(path)
    if not executable.exports_function(READLINE):
        return None
    return ReadlineTarget(path, LineSource.READLINE, executable.offset_of(READLINE))


def mapped_readline_libraries(proc: Path = PROC) -> Iterator[Path]:
    """libreadline.so files mapped by running processes (each file once)."""
    seen: set[tuple[str, int]] = set()
    own = os.getpid()
    for name in os.listdir(proc):
        if not name.isdigit() or int(name) == own:
            continue
        try:
            maps = (proc / name / "maps").read_text(errors="replace")
        except OSError:
            continue  # gone, or a kernel thread
        for mapped in parse_maps(maps):
            key = (mapped.device, mapped.inode)
            if key not in seen and Path(mapped.path).name.startswith(READLINE_PREFIX):
                seen.add(key)
                yield Path(mapped.path)


@register("bash")
class BashModule(ShellModule):
    """Capture the commands typed into bash (with their exit status), and the lines
    read by programs linked with libreadline (psql, sqlite3, gdb)."""

    config_type: ClassVar[type[GlobalConfig]] = BashConfig
    object_file: ClassVar[str] = "bash.bpf.o"
    summary: ClassVar[str] = "capture bash commands and their exit status (and readline input)"

    def __init__(self, config: GlobalConfig) -> None:
        if not isinstance(config, BashConfig):
            raise ConfigError(f"bash needs a BashConfig, got {type(config).__name__}")
        super().__init__(config)
        self.bash_config = config
        self.targets: list[ReadlineTarget] = []
        self.bash: Path | None = None
        self.execute_offset: int | None = None

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--bash", metavar="PATH",
                            help="the bash binary to hook (default: bash on PATH)")
        parser.add_argument(
            "--readlineso", metavar="PATH",
            help="the libreadline.so whose programs (psql, sqlite3, gdb) to capture too "
            f"(default: the system {READLINE_SONAME} and every one running processes map)",
        )

    @classmethod
    def config_from_args(cls, args: argparse.Namespace, common: dict[str, Any]) -> GlobalConfig:
        return BashConfig(**cls.shell_arguments(args, common), bash=args.bash,
                          readlineso=args.readlineso)

    def prepare(self) -> None:
        config = self.bash_config
        check_pid(config.pid)
        bash = find_program(config.bash, "bash", "--bash")
        executable = Executable(bash)
        if not executable.has(EXECUTE):
            raise LibraryNotFound(f"--bash {bash}: no {EXECUTE} symbol; is it bash?")
        self.bash = bash
        self.execute_offset = executable.offset_of(EXECUTE)
        seen: set[tuple[int, int]] = set()
        own = bash_readline(bash)
        if own is not None:
            self._add(own, seen)
        else:
            log.info("%s has no readline of its own: its lines come through libreadline", bash)
        for path in self._readline_paths():
            target = library_readline(path)
            if target is None:
                if config.readlineso is not None:
                    raise LibraryNotFound(f"--readlineso {path}: it exports no {READLINE}")
                continue
            self._add(target, seen)
        if not self.targets:
            raise LibraryNotFound(f"no readline found in {bash} or a libreadline; "
                                  "pass --readlineso PATH")
        for target in self.targets:
            log.info("%s: lines from %s", target.path,
                     f"{TEARDOWN} (continuations told apart)" if target.line_count_vaddr
                     else f"{TEARDOWN}" if target.teardown_vaddr
                     else f"{READLINE}'s return (each line a command)",
                     extra={"capture_module": self.name})

    def _readline_paths(self) -> list[Path]:
        given = self.bash_config.readlineso
        if given is not None:
            path = Path(given)
            if not path.is_file():
                raise LibraryNotFound(f"--readlineso {given}: no such file")
            return [path]
        system = find_library(READLINE_SONAME)
        return [*([system] if system is not None else []), *mapped_readline_libraries()]

    def _add(self, target: ReadlineTarget, seen: set[tuple[int, int]]) -> None:
        stat = target.path.stat()
        if (stat.st_dev, stat.st_ino) in seen:
            return
        if len(self.targets) >= MAX_SHELL_TARGETS:
            log.warning("not hooking %s: %d readline files hooked already", target.path,
                        MAX_SHELL_TARGETS)
            return
        seen.add((stat.st_dev, stat.st_ino))
        self.targets.append(target)

    def bpf_objects(self) -> Sequence[BpfObject]:
        return (BpfObject(self.object_file),)

    def constants(self) -> Mapping[str, int | bytes]:
        def table(values: list[int]) -> bytes:
            values = values + [0] * (MAX_SHELL_TARGETS - len(values))
            return struct.pack(f"<{MAX_SHELL_TARGETS}Q", *values)

        return {
            **super().constants(),
            "teardown_vaddr": table([target.teardown_vaddr for target in self.targets]),
            "line_buffer_vaddr": table([target.line_buffer_vaddr for target in self.targets]),
            "line_count_vaddr": table([target.line_count_vaddr for target in self.targets]),
        }

    def attach_steps(self) -> Sequence[AttachStep]:
        steps: list[AttachStep] = [
            ProbeSpec("readline_teardown", target.path, target.probe_offset,
                      label=f"{target.path.name}:{TEARDOWN}",
                      cookie=index | int(target.source) << 8)
            if target.source is LineSource.BASH else
            ProbeSpec("readline_return", target.path, target.probe_offset, retprobe=True,
                      label=f"{target.path.name}:{READLINE} (return)",
                      cookie=index | int(target.source) << 8)
            for index, target in enumerate(self.targets)
        ]
        if self.bash is not None and self.execute_offset is not None:
            steps.append(ProbeSpec("execute_command_enter", self.bash, self.execute_offset,
                                   label=f"{self.bash.name}:{EXECUTE}"))
            steps.append(ProbeSpec("execute_command_return", self.bash, self.execute_offset,
                                   retprobe=True, label=f"{self.bash.name}:{EXECUTE} (return)"))
        return steps
