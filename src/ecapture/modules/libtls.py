"""What the TLS-library modules other than OpenSSL's share (`ecapture gnutls`, `ecapture nss`).

Each hooks exported functions of one or more shared libraries with the
programs of bpf/tls.bpf.c, so fds, addresses, connection ids, closes and the
HTTP processing are those of `ecapture tls`. A module lists its libraries
(`LibrarySpec`: the soname, the function that makes a mapped file one of
them, the probes) and the base finds the files: the system library plus
each file running processes map that exports that function (like tls), or
only the path its flag names.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from ecapture.config import GlobalConfig
from ecapture.elf.discovery import SslTarget, TargetScanner
from ecapture.elf.ldcache import find_library
from ecapture.elf.symbols import Executable
from ecapture.errors import ConfigError, EcaptureError, LibraryNotFound
from ecapture.modules.base import Module, ProbeSpec
from ecapture.modules.parts import BpfObject, Reader

if TYPE_CHECKING:
    from ecapture.processor.tracker import ConnectionTracker

log = logging.getLogger(__name__)

MAX_KERNEL_CALL_BYTES = 1 << 30
RETURN_PROGRAM = "call_return"  # tls.bpf.c: copies what a data call moved
# tls.bpf.c's socket programs: each call's socket (its nested socket I/O), and TCP closes.
SOCKET_PROGRAMS = ("sock_send", "sock_recv", "sock_state")


@dataclass(frozen=True, slots=True)
class Hook:
    """One probe on an exported function: `entry` at its start (None: none),
    and `call_return` at its return when `returns` (data and handshake calls),
    or `entry_return` (a uretprobe program of its own) when set."""

    symbol: str
    entry: str | None = None
    returns: bool = False
    entry_return: str | None = None
    required: bool = True  # a library without it is not one to hook

    @property
    def programs(self) -> tuple[str, ...]:
        names = [name for name in (self.entry, self.entry_return) if name is not None]
        if self.returns:
            names.append(RETURN_PROGRAM)
        return tuple(names)


@dataclass(frozen=True, slots=True)
class LibrarySpec:
    """A library a module hooks, and how it is found."""

    flag: str  # the command-line flag that names it: "--gnutls"
    soname: str  # the system one, as the dynamic linker finds it
    marker: str  # an exported function that only this library has
    hooks: tuple[Hook, ...]
    what: str  # for messages: "GnuTLS library"


@dataclass(frozen=True, slots=True)
class HookedFile:
    spec: LibrarySpec
    path: Path
    offsets: tuple[tuple[Hook, int], ...]  # the hooks this file has, at their file offsets


class LibraryTlsModule(Module):
    """Base of modules that capture a TLS library's plaintext with bpf/tls.bpf.c."""

    object_file: ClassVar[str] = "tls.bpf.o"
    spare_ring_map: ClassVar[str | None] = "spare_closes"
    libraries: ClassVar[tuple[LibrarySpec, ...]]

    def __init__(self, config: GlobalConfig) -> None:
        super().__init__(config)
        self.hooked: list[HookedFile] = []
        # flag -> the mapped files found for it, with the processes that map them
        self.targets: dict[str, list[SslTarget]] = {}

    # ----- what each module says --------------------------------------------------------

    def library_path(self, spec: LibrarySpec) -> str | None:
        """The path the user named for `spec` (its flag), None to discover."""
        raise NotImplementedError

    def call_limit(self) -> int:
        """Bytes copied per call in the kernel (tls.bpf.c call_limit)."""
        raise NotImplementedError

    # ----- discovery --------------------------------------------------------------------

    def prepare(self) -> None:
        for spec in self.libraries:
            found = self._hook_files(spec)
            if not found:
                raise LibraryNotFound(
                    f"no {spec.what} exporting {spec.marker} found; pass {spec.flag} PATH"
                )
            self.hooked.extend(found)

    def _hook_files(self, spec: LibrarySpec) -> list[HookedFile]:
        explicit = self.library_path(spec)
        found: list[HookedFile] = []
        seen: set[tuple[int, int]] = set()
        for path in self._candidates(spec, explicit):
            try:
                stat = path.stat()
            except OSError as error:
                if explicit is not None:
                    raise LibraryNotFound(f"{spec.flag} {path}: {error.strerror}") from None
                log.debug("skipping %s: %s", path, error)
                continue
            if (stat.st_dev, stat.st_ino) in seen:
                continue
            seen.add((stat.st_dev, stat.st_ino))
            try:
                hooked = self._plan(spec, path)
            except EcaptureError as error:
                if explicit is not None:
                    raise LibraryNotFound(
                        f"{spec.flag} {path}: not a {spec.what} ({error})") from None
                log.warning("not hooking %s: %s", path, error)
                continue
            found.append(hooked)
            log.info("%s: %s, %d functions hooked (%s)", path, spec.what, len(hooked.offsets),
                     ", ".join(hook.symbol for hook, _ in hooked.offsets),
                     extra={"capture_module": self.name})
        return found

    def _candidates(self, spec: LibrarySpec, explicit: str | None) -> list[Path]:
        if explicit is not None:
            path = Path(explicit)
            if not path.exists():
                raise LibraryNotFound(f"{spec.flag} {path}: no such file")
            return [path]
        pid = self.config.pid or None
        targets = TargetScanner(function=spec.marker).scan(pid)
        self.targets[spec.flag] = targets
        if pid is not None and not targets and not Path(f"/proc/{pid}").exists():
            raise ConfigError(f"-p {pid}: no such process")
        paths: list[Path] = []
        system = find_library(spec.soname)
        if system is not None and (pid is None or not targets):
            paths.append(system.resolve())
        paths.extend(target.path for target in targets)
        return paths

    @staticmethod
    def _plan(spec: LibrarySpec, path: Path) -> HookedFile:
        executable = Executable(path)
        offsets: list[tuple[Hook, int]] = []
        for hook in spec.hooks:
            if not executable.exports_function(hook.symbol):
                if hook.required:
                    raise LibraryNotFound(f"{hook.symbol} is not exported")
                continue
            offsets.append((hook, executable.offset_of(hook.symbol)))
        return HookedFile(spec, path, tuple(offsets))

    # ----- what the base runs -----------------------------------------------------------

    def probes(self) -> Sequence[ProbeSpec]:
        specs: list[ProbeSpec] = []
        for hooked in self.hooked:
            for hook, offset in hooked.offsets:
                label = f"{hooked.path.name}:{hook.symbol}"
                if hook.entry is not None:
                    specs.append(ProbeSpec(hook.entry, hooked.path, offset, label=label))
                if hook.entry_return is not None:
                    specs.append(ProbeSpec(hook.entry_return, hooked.path, offset,
                                           retprobe=True, label=f"{label} (return)"))
                if hook.returns:
                    specs.append(ProbeSpec(RETURN_PROGRAM, hooked.path, offset, retprobe=True,
                                           label=f"{label} (return)"))
        return specs

    def bpf_objects(self) -> Sequence[BpfObject]:
        # Only the programs this module attaches are loaded (tls.bpf.c serves several).
        programs = {name for spec in self.libraries for hook in spec.hooks
                    for name in hook.programs}
        return (BpfObject(self.object_file, (Reader(self.ring_map),),
                          programs=frozenset(programs | set(SOCKET_PROGRAMS))),)

    def auto_attached_programs(self) -> Sequence[str]:
        return SOCKET_PROGRAMS

    def constants(self) -> dict[str, int | bytes]:
        return {**super().constants(), "call_limit": self.call_limit()}

    def make_tracker(self) -> ConnectionTracker | None:
        from ecapture.processor.tracker import ConnectionTracker

        return ConnectionTracker()

    def summary_counts(self) -> str:
        pipeline = self._pipeline
        if pipeline is None:
            return ""
        counters = pipeline.counters
        return (f"{counters.data_bytes} payload bytes, {counters.http_exchanges} http exchanges, "
                f"{counters.connections_closed} connections closed")


def check_call_limit(limit: int) -> None:
    if not 0 < limit <= MAX_KERNEL_CALL_BYTES:
        raise ConfigError(f"--kernel-call-limit must be in 1..{MAX_KERNEL_CALL_BYTES}, got {limit}")
