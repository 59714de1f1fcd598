"""Finding the TLS libraries to hook: the system's libssl and what processes map.

A process is a target when it maps a file that exports SSL_write in .dynsym:
OpenSSL's libssl.so.3/.so.1.1, BoringSSL's libssl.so.0, or an executable with
OpenSSL inside (a node binary). NSS's libssl3.so exports no SSL_write, so it
never qualifies although its name looks alike.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ecapture.elf.ldcache import find_library
from ecapture.elf.symbols import Executable
from ecapture.elf.version import ssl_flavor
from ecapture.errors import LibraryNotFound

PROC = Path("/proc")
# OpenSSL 3 first, then 1.1 (Debian 12 ships 3; 1.1 survives in older images).
LIBSSL_SONAMES = ("libssl.so.3", "libssl.so.1.1")
TARGET_FUNCTION = "SSL_write"
DELETED_SUFFIX = " (deleted)"


def system_libssl() -> Path | None:
    """OpenSSL's libssl as the dynamic linker would load it (3 before 1.1), resolved."""
    for soname in LIBSSL_SONAMES:
        path = find_library(soname)
        if path is not None:
            return path.resolve()
    return None


@dataclass(frozen=True, slots=True)
class SslTarget:
    """A file with SSL_write, and the processes that map it."""

    path: Path  # readable by us: through /proc/PID/root when in another mount namespace
    pids: tuple[int, ...]
    flavor: str  # "openssl", "boringssl" (see version.ssl_flavor)


@dataclass(frozen=True, slots=True)
class MappedFile:
    """One executable file mapping of a process, from /proc/PID/maps."""

    device: str  # "fd:01": major:minor in hex, as maps prints it
    inode: int
    path: str  # as the process sees it


def parse_maps(text: str) -> Iterator[MappedFile]:
    """Executable file mappings of a maps file (proc(5) /proc/pid/maps), each file once."""
    seen: set[tuple[str, int]] = set()
    for line in text.splitlines():
        # address perms offset dev inode pathname; pathname may hold spaces
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or "x" not in fields[1]:
            continue
        inode = int(fields[4])
        path = fields[5]
        if inode == 0 or not path.startswith("/") or path.endswith(DELETED_SUFFIX):
            continue  # anonymous, [vdso]-like, or replaced on disk (no path to attach to)
        key = (fields[3], inode)
        if key not in seen:
            seen.add(key)
            yield MappedFile(fields[3], inode, path)


@dataclass(frozen=True, slots=True)
class _Classified:
    is_target: bool
    flavor: str


@dataclass(slots=True)
class _Found:
    path: Path
    host_path: bool
    flavor: str
    pids: set[int] = field(default_factory=set)


class TargetScanner:
    """Scans /proc for SSL targets; each file (device, inode) is parsed once per scanner.

    Keep one scanner for repeated scans so files already judged are not read again.
    """

    def __init__(self, proc: Path = PROC, *, function: str = TARGET_FUNCTION) -> None:
        self.proc = proc
        self.function = function  # what a file must export to be a target
        self._files: dict[tuple[str, int], _Classified] = {}
        self.files_parsed = 0

    def _classify(self, key: tuple[str, int], readable: Path) -> _Classified:
        known = self._files.get(key)
        if known is None:
            self.files_parsed += 1
            try:
                exe = Executable(readable)
                is_target = exe.exports_function(self.function)
                known = _Classified(is_target, ssl_flavor(exe) if is_target else "unknown")
            except (LibraryNotFound, OSError):
                # unreadable or not ELF: judged once, not retried for every process
                known = _Classified(False, "unknown")
            self._files[key] = known
        return known

    def _own_mount_namespace(self) -> str | None:
        try:
            return os.readlink(self.proc / "self" / "ns" / "mnt")
        except OSError:
            return None

    def _pids(self, pid: int | None) -> Iterable[int]:
        if pid is not None:
            return (pid,)
        own = os.getpid()
        return (int(name) for name in os.listdir(self.proc) if name.isdigit() and int(name) != own)

    def scan(self, pid: int | None = None) -> list[SslTarget]:
        """Targets mapped by `pid`, or by every process but ours when None."""
        own_namespace = self._own_mount_namespace()
        found: dict[tuple[str, int], _Found] = {}
        for process in self._pids(pid):
            process_dir = self.proc / str(process)
            try:
                maps = (process_dir / "maps").read_text(errors="replace")
                namespace = os.readlink(process_dir / "ns" / "mnt")
            except OSError:
                continue  # vanished mid-scan, or not ours to read
            if not maps:
                continue  # kernel thread: no user address space
            same_namespace = own_namespace is None or namespace == own_namespace
            for mapped in parse_maps(maps):
                readable = (
                    Path(mapped.path)
                    if same_namespace
                    else process_dir / "root" / mapped.path.lstrip("/")
                )
                key = (mapped.device, mapped.inode)
                classified = self._classify(key, readable)
                if not classified.is_target:
                    continue
                entry = found.get(key)
                if entry is None:
                    entry = found[key] = _Found(readable, same_namespace, classified.flavor)
                elif same_namespace and not entry.host_path:
                    # a host path outlives the process whose /proc/PID/root we first used
                    entry.path, entry.host_path = readable, True
                entry.pids.add(process)
        return sorted(
            (
                SslTarget(entry.path, tuple(sorted(entry.pids)), entry.flavor)
                for entry in found.values()
            ),
            key=lambda target: str(target.path),
        )


def process_ssl_targets(
    pid: int | None = None, *, scanner: TargetScanner | None = None
) -> list[SslTarget]:
    """Files with SSL_write mapped by `pid` (or by all processes), with who maps them."""
    return (scanner or TargetScanner()).scan(pid)
