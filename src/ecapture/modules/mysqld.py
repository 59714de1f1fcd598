"""`ecapture mysqld`: every statement a MariaDB or MySQL server dispatches, with
its thread, duration and result.

Hooks (bpf/mysqld.bpf.c): dispatch_command's entry and return; the server's
error packet; the OK packet of a prepare (its statement id). The signature of
dispatch_command is read from the binary's mangled symbol, never from a
version number:
  _Z16dispatch_command19enum_server_commandP3THDPcj...  MariaDB (command, THD*, packet, length)
  _Z16dispatch_commandP3THDPK8COM_DATA19enum_server_command  MySQL 5.7/8.0
      (THD*, COM_DATA*, command)
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ecapture.config import GlobalConfig
from ecapture.elf.symbols import Executable
from ecapture.errors import LibraryNotFound
from ecapture.modules.database import DatabaseModule, check_pid, database_config, find_server
from ecapture.modules.parts import AttachStep, BpfObject, ProbeSpec
from ecapture.modules.registry import register
from ecapture.processor.query import Flavor

log = logging.getLogger(__name__)

SERVER_NAMES = ("mariadbd", "mysqld")
MARIADB_DISPATCH = "_Z16dispatch_command19enum_server_commandP3THDPcj"  # + the rest of the args
MYSQL_DISPATCH = "_Z16dispatch_commandP3THDPK8COM_DATA19enum_server_command"
SIGNATURE_MARIADB = 1  # bpf/mysqld.bpf.c
SIGNATURE_MYSQL = 2
# The error packet: (cookie, mangled name) in the order tried.
ERROR_HOOKS = (
    (1, "_ZN8Protocol21net_send_error_packetEP3THDjPKcS3_"),  # MariaDB
    (2, "_ZN16Protocol_classic10send_errorEjPKcS1_"),  # MySQL
)
# The prepared statement's id as the client is told it.
PREPARED_HOOKS = (
    (1, "my_net_write"),  # MariaDB send_prep_stmt: a 12-byte OK packet
    (2, "_ZN16Protocol_classic15store_ps_statusEmjjm"),  # MySQL (stmt_id, ...)
)


@dataclass(frozen=True, slots=True, kw_only=True)
class MysqldConfig(GlobalConfig):
    """Configuration of `ecapture mysqld`."""

    mysqld: str | None = None  # None: a running mariadbd/mysqld, else the one installed


@dataclass(frozen=True, slots=True)
class DispatchHook:
    symbol: str
    offset: int
    signature: int


def find_dispatch(executable: Executable) -> DispatchHook:
    """dispatch_command and its signature, or LibraryNotFound saying what was there."""
    names = [name for name in executable.functions() if "16dispatch_command" in name]
    for name in sorted(names):
        if name.startswith(MARIADB_DISPATCH):
            return DispatchHook(name, executable.offset_of(name), SIGNATURE_MARIADB)
        if name.startswith(MYSQL_DISPATCH):
            return DispatchHook(name, executable.offset_of(name), SIGNATURE_MYSQL)
    found = ", ".join(names) or "none"
    raise LibraryNotFound(
        f"{executable.path}: no dispatch_command of a known signature (MariaDB's "
        f"(enum_server_command, THD*, char*, uint, ...) or MySQL's (THD*, const COM_DATA*, "
        f"enum_server_command)); dispatch_command symbols found: {found}"
    )


def _first(executable: Executable, hooks: tuple[tuple[int, str], ...]) -> tuple[int, str] | None:
    for cookie, name in hooks:
        if executable.has(name):
            return cookie, name
    return None


@register("mysqld", "mariadbd", "mysql")
class MysqldModule(DatabaseModule):
    """Capture the statements a MariaDB/MySQL server runs, with duration and result."""

    config_type: ClassVar[type[GlobalConfig]] = MysqldConfig
    object_file: ClassVar[str] = "mysqld.bpf.o"
    flavor: ClassVar[Flavor] = Flavor.MYSQLD
    summary: ClassVar[str] = "capture MariaDB/MySQL queries with their duration and result"

    def __init__(self, config: GlobalConfig) -> None:
        database_config(config, MysqldConfig, "mysqld")
        assert isinstance(config, MysqldConfig)
        super().__init__(config)
        self.mysqld_config = config
        self.binary: Path | None = None
        self.dispatch: DispatchHook | None = None
        self.error_hook: tuple[int, str] | None = None
        self.prepared_hook: tuple[int, str] | None = None

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--mysqld", metavar="PATH",
            help="the mariadbd/mysqld binary to hook (default: that of a running server, "
            "else the one installed)",
        )

    @classmethod
    def config_from_args(cls, args: argparse.Namespace, common: dict[str, Any]) -> GlobalConfig:
        return MysqldConfig(**cls.database_arguments(args, common), mysqld=args.mysqld)

    def prepare(self) -> None:
        check_pid(self.config.pid)
        binary = find_server(self.mysqld_config.mysqld, SERVER_NAMES, "--mysqld")
        executable = Executable(binary)
        self.dispatch = find_dispatch(executable)
        self.error_hook = _first(executable, ERROR_HOOKS)
        self.prepared_hook = _first(executable, PREPARED_HOOKS)
        self.binary = binary
        log.info("%s: %s (%s signature); errors from %s; prepared ids from %s", binary,
                 self.dispatch.symbol,
                 "MariaDB" if self.dispatch.signature == SIGNATURE_MARIADB else "MySQL",
                 self.error_hook[1] if self.error_hook else "nothing: every status shows ok",
                 self.prepared_hook[1] if self.prepared_hook else "nothing",
                 extra={"capture_module": self.name})
        if self.error_hook is None:
            log.warning("%s exports no known error-packet function: failed statements "
                        "cannot be told from the others", binary)

    def bpf_objects(self) -> Sequence[BpfObject]:
        return (BpfObject(self.object_file),)

    def constants(self) -> Mapping[str, int | bytes]:
        signature = self.dispatch.signature if self.dispatch else SIGNATURE_MARIADB
        return {**super().constants(), "dispatch_signature": signature}

    def attach_steps(self) -> Sequence[AttachStep]:
        binary, dispatch = self.binary, self.dispatch
        if binary is None or dispatch is None:
            return ()
        executable = Executable(binary)
        steps: list[AttachStep] = [
            ProbeSpec("dispatch_enter", binary, dispatch.offset, label="dispatch_command"),
            ProbeSpec("dispatch_return", binary, dispatch.offset, retprobe=True,
                      label="dispatch_command (return)"),
        ]
        for program, hook in (("error_packet", self.error_hook),
                              ("prepared_id", self.prepared_hook)):
            if hook is not None:
                cookie, name = hook
                steps.append(ProbeSpec(program, binary, executable.offset_of(name),
                                       label=name, cookie=cookie))
        return steps
