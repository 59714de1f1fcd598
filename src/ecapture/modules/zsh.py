"""`ecapture zsh`: the commands of interactive zsh and their exit status.

Hooks (bpf/zsh.bpf.c): zleentry in the zsh binary, which every interactive
line goes through (zleread itself lives in zsh/zle.so, loaded later with
dlopen); the global lastval for the status. Both looked up in the file.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ecapture.config import GlobalConfig
from ecapture.elf.symbols import Executable
from ecapture.elf.variables import variable_addresses
from ecapture.errors import ConfigError, LibraryNotFound
from ecapture.modules.parts import AttachStep, ProbeSpec
from ecapture.modules.registry import register
from ecapture.modules.shell import ShellConfig, ShellModule, check_pid, find_program

ENTRY = "zleentry"
LASTVAL = "lastval"


@dataclass(frozen=True, slots=True, kw_only=True)
class ZshConfig(ShellConfig):
    """Configuration of `ecapture zsh`."""

    zsh: str | None = None  # None: zsh on PATH


@register("zsh")
class ZshModule(ShellModule):
    """Capture the commands typed into zsh, with their exit status."""

    config_type: ClassVar[type[GlobalConfig]] = ZshConfig
    object_file: ClassVar[str] = "zsh.bpf.o"
    summary: ClassVar[str] = "capture zsh commands and their exit status"

    def __init__(self, config: GlobalConfig) -> None:
        if not isinstance(config, ZshConfig):
            raise ConfigError(f"zsh needs a ZshConfig, got {type(config).__name__}")
        super().__init__(config)
        self.zsh_config = config
        self.zsh: Path | None = None
        self.entry_vaddr = self.entry_offset = self.lastval_vaddr = 0

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--zsh", metavar="PATH",
                            help="the zsh binary to hook (default: zsh on PATH)")

    @classmethod
    def config_from_args(cls, args: argparse.Namespace, common: dict[str, Any]) -> GlobalConfig:
        return ZshConfig(**cls.shell_arguments(args, common), zsh=args.zsh)

    def prepare(self) -> None:
        check_pid(self.zsh_config.pid)
        zsh = find_program(self.zsh_config.zsh, "zsh", "--zsh")
        executable = Executable(zsh)
        if not executable.has(ENTRY):
            raise LibraryNotFound(f"--zsh {zsh}: no {ENTRY} symbol; is it zsh?")
        self.zsh = zsh
        self.entry_vaddr = executable.address(ENTRY)
        self.entry_offset = executable.offset_of(ENTRY)
        self.lastval_vaddr = variable_addresses(zsh, (LASTVAL,)).get(LASTVAL, 0)
        if not self.lastval_vaddr:
            raise LibraryNotFound(f"--zsh {zsh}: no {LASTVAL} global: exit statuses unknown")

    def constants(self) -> Mapping[str, int | bytes]:
        return {**super().constants(), "entry_vaddr": self.entry_vaddr,
                "lastval_vaddr": self.lastval_vaddr}

    def attach_steps(self) -> Sequence[AttachStep]:
        if self.zsh is None:
            return ()
        return (
            ProbeSpec("zleentry_enter", self.zsh, self.entry_offset, label=f"zsh:{ENTRY}"),
            ProbeSpec("zleentry_return", self.zsh, self.entry_offset, retprobe=True,
                      label=f"zsh:{ENTRY} (return)"),
        )
