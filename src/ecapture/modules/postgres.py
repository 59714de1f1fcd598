"""`ecapture postgres`: every query a PostgreSQL backend runs, with the backend's
pid, the duration and success or failure.

Hooks (bpf/postgres.bpf.c): pgstat_report_activity (the query's text when it
starts, the idle report when the backend is ready for the next one),
PortalRun (one per execution) and AbortCurrentTransaction (an error reached
the top level). All three are exported
by Debian's stripped postgres 15 (exec_simple_query and exec_execute_message
are static there); no version is assumed, only these symbols.
"""

from __future__ import annotations

import argparse
import glob
import logging
from collections.abc import Sequence
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

REPORT_ACTIVITY = "pgstat_report_activity"
ABORT = "AbortCurrentTransaction"
PORTAL_RUN = "PortalRun"
HOOKED = (REPORT_ACTIVITY, ABORT, PORTAL_RUN)
SERVER_NAMES = ("postgres",)


@dataclass(frozen=True, slots=True, kw_only=True)
class PostgresConfig(GlobalConfig):
    """Configuration of `ecapture postgres`."""

    postgres: str | None = None  # None: a running postgres, else the one installed


def installed_bin_dirs() -> tuple[str, ...]:
    """Debian keeps each major version's binaries in /usr/lib/postgresql/N/bin: newest first."""
    found = glob.glob("/usr/lib/postgresql/*/bin")

    def major(path: str) -> int:
        version = Path(path).parent.name
        return int(version) if version.isdigit() else -1

    return tuple(sorted(found, key=major, reverse=True))


@register("postgres", "postgresql", "pg")
class PostgresModule(DatabaseModule):
    """Capture the queries PostgreSQL backends run, with duration and result."""

    config_type: ClassVar[type[GlobalConfig]] = PostgresConfig
    object_file: ClassVar[str] = "postgres.bpf.o"
    flavor: ClassVar[Flavor] = Flavor.POSTGRES
    summary: ClassVar[str] = "capture PostgreSQL queries with their duration and result"

    def __init__(self, config: GlobalConfig) -> None:
        database_config(config, PostgresConfig, "postgres")
        assert isinstance(config, PostgresConfig)
        super().__init__(config)
        self.postgres_config = config
        self.binary: Path | None = None
        self.offsets: dict[str, int] = {}

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--postgres", metavar="PATH",
            help="the postgres binary to hook (default: that of a running server, else the "
            "newest installed)",
        )

    @classmethod
    def config_from_args(cls, args: argparse.Namespace, common: dict[str, Any]) -> GlobalConfig:
        return PostgresConfig(**cls.database_arguments(args, common), postgres=args.postgres)

    def prepare(self) -> None:
        check_pid(self.config.pid)
        binary = find_server(self.postgres_config.postgres, SERVER_NAMES, "--postgres",
                             installed_bin_dirs())
        executable = Executable(binary)
        missing = [name for name in HOOKED if not executable.has(name)]
        if missing:
            raise LibraryNotFound(f"{binary}: no {' or '.join(missing)} symbol; is it postgres?")
        self.offsets = {name: executable.offset_of(name) for name in HOOKED}
        self.binary = binary
        log.info("%s: queries from %s, executions from %s, errors from %s", binary,
                 REPORT_ACTIVITY, PORTAL_RUN, ABORT, extra={"capture_module": self.name})

    def bpf_objects(self) -> Sequence[BpfObject]:
        return (BpfObject(self.object_file),)

    def attach_steps(self) -> Sequence[AttachStep]:
        binary = self.binary
        if binary is None:
            return ()
        return (
            ProbeSpec("report_activity", binary, self.offsets[REPORT_ACTIVITY],
                      label=REPORT_ACTIVITY),
            ProbeSpec("abort_transaction", binary, self.offsets[ABORT], label=ABORT),
            ProbeSpec("portal_run", binary, self.offsets[PORTAL_RUN], label=PORTAL_RUN),
        )
