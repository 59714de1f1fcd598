"""What `ecapture mysqld` and `ecapture postgres` share: records, processor, output,
and finding the server.

A database module reads chunk and end records (bpf/events.h, database block),
the query assembler (processor/query.py) turns them into `Query` items, and
the renderers below show them: JSON `type: "query"`, text one line per query.
The server binary is the one given, else that of a running server (found by
/proc/PID/exe), else the one on PATH: a uprobe on a file's inode reaches
every process running it, those started later too.
"""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import msgspec

from ecapture.config import GlobalConfig
from ecapture.db_events import DECODERS, DbStat
from ecapture.elf.discovery import PROC
from ecapture.errors import ConfigError, LibraryNotFound
from ecapture.modules.base import Module
from ecapture.modules.parts import Decoder, StatsLayout
from ecapture.output.render import json_renderer, text_renderer
from ecapture.processor.query import Flavor, Query, QueryAssembler

# The writers call the renderers below: whichever format runs has loaded its own.
if TYPE_CHECKING:
    from ecapture.output.jsonl import JsonLinesWriter
    from ecapture.output.text import TextWriter
    from ecapture.processor.interface import RecordProcessor

DB_STATS = StatsLayout(
    "stats",
    {DbStat.RECORDS: "submitted", DbStat.RING_FULL_RECORDS: "lost",
     DbStat.TRUNCATED: "queries cut", DbStat.READ_FAULTS: "read faults"},
    records=DbStat.RECORDS, ring_full_records=DbStat.RING_FULL_RECORDS,
    ring_full_bytes=DbStat.RING_FULL_BYTES,
)
# Queries are small next to TLS traffic, but one may be 1 MiB: 16 MiB rings
# (--mapsize still wins when given).
DB_MAPSIZE_KIB = 16 * 1024


def running_servers(names: frozenset[str], proc: Path = PROC) -> Iterator[tuple[int, Path]]:
    """(pid, executable) of each running process whose executable is named one of `names`."""
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        exe = proc / entry / "exe"
        try:
            target = os.readlink(exe)
        except OSError:
            continue  # gone, a kernel thread, or not ours to read
        target = target.removesuffix(" (deleted)")
        if Path(target).name in names:
            # The file as this process sees it: through its root when it
            # runs in another mount namespace (a container).
            path = Path(target)
            if not path.is_file():
                path = proc / entry / "root" / target.lstrip("/")
            yield int(entry), path


def find_server(given: str | None, names: tuple[str, ...], flag: str,
                extra_dirs: tuple[str, ...] = ()) -> Path:
    """The server binary: `given`, else the oldest running server's, else one on PATH."""
    if given is not None:
        path = Path(given)
        if not path.is_file():
            raise LibraryNotFound(f"{flag} {given}: no such file")
        return path.resolve()
    running = sorted(running_servers(frozenset(names)))
    if running:
        return running[0][1]
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin",
                              *extra_dirs])
    for name in names:
        found = shutil.which(name, path=search)
        if found is not None:
            return Path(found).resolve()
    raise LibraryNotFound(f"no running {' or '.join(names)} and none installed; pass {flag} PATH")


def check_pid(pid: int) -> None:
    if pid and not os.path.exists(f"/proc/{pid}"):
        raise ConfigError(f"-p {pid}: no such process")


class DatabaseModule(Module):
    """Base of the database modules: chunks + ends → queries."""

    stats_layout: ClassVar[StatsLayout | None] = DB_STATS
    event_types: ClassVar[tuple[type, ...]] = (Query,)
    flavor: ClassVar[Flavor]

    @staticmethod
    def database_arguments(args: argparse.Namespace, common: dict[str, Any]) -> dict[str, Any]:
        if "mapsize" not in vars(args):  # the global default is sized for TLS traffic
            common = {**common, "mapsize_kib": min(common["mapsize_kib"], DB_MAPSIZE_KIB)}
        return common

    def decoders(self) -> Mapping[int, Decoder] | None:
        return DECODERS

    def make_processor(self) -> RecordProcessor | None:
        self._assembler = QueryAssembler(self.flavor)
        return self._assembler

    def summary_counts(self) -> str:
        assembler: QueryAssembler | None = getattr(self, "_assembler", None)
        if assembler is None:
            return ""
        counters = assembler.counters
        shown = f"{counters.queries} quer{'y' if counters.queries == 1 else 'ies'}"
        if counters.errors:
            shown += f" ({counters.errors} failed)"
        if counters.truncated:
            shown += f", {counters.truncated} cut"
        return shown


def database_config(config: GlobalConfig, wanted: type[GlobalConfig], module: str) -> None:
    if not isinstance(config, wanted):
        raise ConfigError(f"{module} needs a {wanted.__name__}, got {type(config).__name__}")


# -- output -----------------------------------------------------------------------


class QueryEvent(msgspec.Struct, omit_defaults=True):
    type: Literal["query"]
    module: str
    ts: int
    pid: int
    tid: int
    comm: str
    uid: int
    db_pid: int
    thread: int
    command: str
    sql: str  # UTF-8; an invalid byte shows as U+FFFD
    duration_ns: int | None
    status: str | None  # "ok", "error"; null: the capture ended before the query
    truncated: bool
    sql_len: int  # the text's length (more than sql's when truncated)
    stmt_id: int | None = None
    error_code: int | None = None
    sqlstate: str | None = None
    error: str | None = None
    statement_unseen: bool = False


@json_renderer(Query)
def _query_json(writer: JsonLinesWriter, item: Query) -> QueryEvent:
    return QueryEvent(
        "query", writer.module, item.timestamp_ns, item.pid, item.tid, item.comm, item.uid,
        item.pid, item.thread, item.command, item.sql.decode("utf-8", errors="replace"),
        item.duration_ns, item.status, item.truncated, max(item.text_len, len(item.sql)),
        item.stmt_id, item.error_code, item.sqlstate,
        None if item.error is None else item.error.decode("utf-8", errors="replace"),
        item.statement_unseen,
    )


def _duration(ns: int | None) -> str:
    if ns is None:
        return "?"
    if ns < 1_000_000:
        return f"{ns / 1000:.0f}us"
    return f"{ns / 1_000_000:.3f}ms"


@text_renderer(Query)
def _query_text(writer: TextWriter, item: Query) -> str:
    from ecapture.output.text import escape_text  # loaded with the writer

    colors = writer.colors
    if item.status is None:
        status = "status ?"
    elif item.status == "ok":
        status = f"{colors.good}ok{colors.reset}"
    else:
        code = f" {item.error_code}" if item.error_code else ""
        state = f" ({item.sqlstate})" if item.sqlstate else ""
        message = (": " + escape_text(item.error).replace("\n", "\\n")
                   if item.error else "")
        status = f"{colors.bad}error{code}{state}{message}{colors.reset}"
    cut = f" [cut at {len(item.sql)} of {item.text_len} bytes]" if item.truncated else ""
    statement = f" #{item.stmt_id}" if item.stmt_id is not None else ""
    unseen = " (prepared before the capture)" if item.statement_unseen else ""
    # One line per query: a multi-line statement's line breaks show as \n.
    sql = escape_text(item.sql).replace("\n", "\\n")
    return (f"{writer.time_text(item.timestamp_ns)} {item.database} pid {item.pid} "
            f"thread {item.thread} {item.command}{statement} {_duration(item.duration_ns)} "
            f"{status}{cut}{unseen}: {sql}\n")
