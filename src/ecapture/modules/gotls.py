"""`ecapture gotls`: plaintext and secrets of Go programs' crypto/tls.

Go programs carry their own TLS: no libssl to hook. The functions come from
the binary itself (src/ecapture/elf/golang.py: `.symtab`, or `.gopclntab`
when stripped), the probes are bpf/gotls.bpf.c's (Go's register ABI, every
RET of Read/Write probed instead of a uretprobe). Its records are the TLS
path's (same connection ids and closes), so the same HTTP/1 and HTTP/2
processing follows.

  -m text    crypto/tls.(*Conn).Write at entry (and its RETs while its socket is
             unknown), (*Conn).Read at its RETs, (*Conn).handshakeContext for the
             socket before the first Read; a Read/Write running at attach is
             reported as lost (in_flight) when it returns
  -m keylog  crypto/tls.(*Config).writeKeyLog, into the NSS key log (-k)
  -m pcap    the packets of -i IFACE (bpf/tc.bpf.c, TC clsact) and those secrets,
             into one pcapng (-w): each new secret a Decryption Secrets Block ahead
             of the packets that need it, so `tshark -r FILE` decrypts alone
"""

from __future__ import annotations

import argparse
import logging
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ecapture.bpf import LoadedObject
from ecapture.bpf.tc import is_loopback, remove_leftover_filters
from ecapture.config import CaptureModel, GlobalConfig
from ecapture.elf.discovery import PROC
from ecapture.errors import (
    ConfigError,
    DecodeError,
    EcaptureError,
    LibraryNotFound,
    SymbolNotFound,
)
from ecapture.events import Clock, Direction, LossReason, Lost, RecordKind, decode_record
from ecapture.modules.base import Module, ProbeSpec
from ecapture.modules.parts import (
    AttachStep,
    BpfObject,
    Decoder,
    Reader,
    SectionAttach,
    StatsLayout,
    Undo,
)
from ecapture.modules.registry import register
from ecapture.packets import RECORD_TC_PACKET, TC_EGRESS, TcPacket, decode_packet
from ecapture.secrets import (
    KEYLOG_STAT_RECORDS,
    KEYLOG_STAT_RING_FULL,
    RECORD_KEYLOG_SECRET,
    KeylogFailure,
    KeylogSecret,
    decode_keylog,
)

# Loaded when a capture needs them: the Go binary reader (pyelftools,
# capstone), the files of -m keylog/pcap and the HTTP tracker.
if TYPE_CHECKING:
    from ecapture.output.keylog import KeylogWriter
    from ecapture.output.pcapng import PcapngWriter
    from ecapture.processor.tracker import ConnectionTracker

log = logging.getLogger(__name__)

WRITE = "crypto/tls.(*Conn).Write"
READ = "crypto/tls.(*Conn).Read"
KEYLOG = "crypto/tls.(*Config).writeKeyLog"
HANDSHAKE = "crypto/tls.(*Conn).handshakeContext"
MAX_KERNEL_CALL_BYTES = 1 << 30
# The attach cookie of go_call_return: which call a RET belongs to (bpf/gotls.bpf.c).
COOKIE_READ = 0
COOKIE_WRITE = 1
TEXT_PROGRAMS = frozenset({"go_write_enter", "go_read_enter", "go_call_return",
                           "go_handshake_enter", "go_handshake_return",
                           "go_sock_send", "go_sock_recv", "sock_state"})
KEYLOG_PROGRAMS = frozenset({"go_write_key_log"})
TC_OBJECT = "tc.bpf.o"
TC_PROGRAMS = frozenset({"ecap_tc_ingress", "ecap_tc_egress"})
OWNER_PROGRAMS = ("owner_on_send", "owner_on_recv", "owner_on_connect")
PCAP_HOLD_NS = 200_000_000  # packets wait this long for a late secret
KEYLOG_STATS = StatsLayout(
    "keylog_stats", {KEYLOG_STAT_RECORDS: "secrets", KEYLOG_STAT_RING_FULL: "lost"},
    records=KEYLOG_STAT_RECORDS, ring_full_records=KEYLOG_STAT_RING_FULL,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class GoTlsConfig(GlobalConfig):
    """Configuration of `ecapture gotls`."""

    elfpath: str | None = None  # None: every running Go program with crypto/tls
    model: CaptureModel = CaptureModel.TEXT
    keylog_file: str | None = None
    pcap_file: str | None = None
    kernel_call_limit: int = 4 << 20
    ifname: str = "lo"  # -m pcap: the interface whose packets are written

    def __post_init__(self) -> None:
        GlobalConfig.__post_init__(self)
        if self.model is CaptureModel.KEYLOG and not self.keylog_file:
            raise ConfigError("-m keylog needs -k/--keylogfile FILE")
        if self.model is CaptureModel.PCAP and not self.pcap_file:
            raise ConfigError("-m pcap needs -w/--pcapfile FILE")
        if not 0 < self.kernel_call_limit <= MAX_KERNEL_CALL_BYTES:
            raise ConfigError(f"--kernel-call-limit must be in 1..{MAX_KERNEL_CALL_BYTES}, "
                              f"got {self.kernel_call_limit}")


@dataclass(frozen=True, slots=True)
class GoTarget:
    """A Go binary to probe and where."""

    path: Path
    version: str
    stripped: bool
    write_entry: int  # file offsets
    write_returns: tuple[int, ...]
    read_entry: int
    read_returns: tuple[int, ...]
    keylog_entry: int | None
    handshake_entry: int | None = None
    handshake_returns: tuple[int, ...] = ()


def inspect_go_binary(path: Path) -> GoTarget:
    """The probe offsets in one Go binary; LibraryNotFound with the reason when it
    cannot be probed (not Go, no crypto/tls, the stack ABI)."""
    from ecapture.elf.golang import GoBinary, NotGo

    try:
        binary = GoBinary(path)
    except NotGo as error:
        raise LibraryNotFound(str(error)) from None
    if not binary.register_abi:
        raise LibraryNotFound(
            f"{path}: built by {binary.version}: Go before 1.17 passes arguments on the "
            "stack; only the register ABI (Go 1.17+) is supported")
    if binary.executable.machine != "EM_X86_64":
        raise LibraryNotFound(f"{path}: {binary.executable.machine} Go binaries are not "
                              "supported (amd64 only)")
    if binary.unsearchable:
        raise LibraryNotFound(f"{path}: {binary.version}, {binary.unsearchable}")
    try:
        write = binary.function(WRITE)
        read = binary.function(READ)
    except SymbolNotFound:
        raise LibraryNotFound(
            f"{path}: a Go program ({binary.version}) without crypto/tls "
            f"(no {WRITE} or {READ})") from None
    keylog = binary.function(KEYLOG) if binary.has(KEYLOG) else None
    handshake = binary.function(HANDSHAKE) if binary.has(HANDSHAKE) else None
    handshake_returns = [] if handshake is None else binary.return_addresses(handshake)
    write_returns = binary.return_addresses(write)
    read_returns = binary.return_addresses(read)
    if not write_returns or not read_returns:
        raise LibraryNotFound(f"{path}: no RET found in {WRITE if not write_returns else READ}")
    return GoTarget(
        path=path, version=binary.version, stripped=binary.stripped,
        write_entry=binary.offset_of(write.address),
        write_returns=tuple(binary.offset_of(a) for a in write_returns),
        read_entry=binary.offset_of(read.address),
        read_returns=tuple(binary.offset_of(a) for a in read_returns),
        keylog_entry=None if keylog is None else binary.offset_of(keylog.address),
        handshake_entry=None if handshake is None else binary.offset_of(handshake.address),
        handshake_returns=tuple(binary.offset_of(a) for a in handshake_returns),
    )


def running_go_programs(proc: Path = PROC, pid: int | None = None) -> list[Path]:
    """The executables of running processes that are Go programs (a .go.buildinfo
    section), each file once; read through /proc/PID/exe (works across mount
    namespaces)."""
    seen: set[tuple[int, int]] = set()
    found: list[Path] = []
    pids = [str(pid)] if pid else [entry for entry in os.listdir(proc) if entry.isdigit()]
    for entry in pids:
        exe = proc / entry / "exe"
        try:
            stat = exe.stat()
        except OSError:
            continue  # gone, a kernel thread, or not ours to read
        key = (stat.st_dev, stat.st_ino)
        if key in seen:
            continue
        seen.add(key)
        if _has_go_buildinfo(exe):
            found.append(exe)
    return found


def _has_go_buildinfo(path: Path) -> bool:
    """True when the ELF file has a .go.buildinfo section (section headers only)."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        with path.open("rb") as stream:
            if stream.read(4) != b"\x7fELF":
                return False
            stream.seek(0)
            return ELFFile(stream).get_section_by_name(".go.buildinfo") is not None
    except (OSError, ELFError):
        return False


class KeylogProcessor:
    """Secrets into the key log file; a failed copy becomes a `lost` item."""

    def __init__(self, writer: KeylogWriter) -> None:
        self.writer = writer

    def feed(self, record: object) -> Sequence[object]:
        if isinstance(record, KeylogSecret):
            self.writer.write(record)
            return ()
        if isinstance(record, KeylogFailure):
            log.warning("secret %s of pid %d not copied: %s", record.label, record.pid,
                        record.reason)
            return (Lost(0, LossReason.READ_FAULT, 1, 0, pid=record.pid, comm=record.comm),)
        return ()

    def expire(self, now_ns: int) -> Sequence[object]:
        return ()

    def flush(self) -> Sequence[object]:
        return ()


RECORD_GO_UNSEEN = 40  # bpf/events.h struct go_unseen_event
# kind, pid, tid, direction, timestamp_ns, bytes, comm[16]
GO_UNSEEN_EVENT = struct.Struct("<4IQQ16s")


@dataclass(frozen=True, slots=True)
class UnseenCall:
    """A Read/Write that returned n > 0 but began before the probes were attached."""

    pid: int
    tid: int
    comm: str
    direction: Direction
    timestamp_ns: int
    nbytes: int


def decode_unseen(raw: bytes, clock: Clock) -> UnseenCall:
    if len(raw) < GO_UNSEEN_EVENT.size:
        raise DecodeError(f"go_unseen_event of {len(raw)} bytes; expected {GO_UNSEEN_EVENT.size}")
    kind, pid, tid, direction, timestamp, nbytes, comm = GO_UNSEEN_EVENT.unpack_from(raw)
    if kind != RECORD_GO_UNSEEN or direction not in (Direction.RECV, Direction.SEND):
        raise DecodeError(f"not a go_unseen_event (kind {kind}, direction {direction})")
    return UnseenCall(pid, tid, comm.split(b"\0", 1)[0].decode(errors="replace"),
                      Direction(direction), clock.to_epoch(timestamp), nbytes)


class UnseenProcessor:
    """Text mode's records besides TLS's: each unseen call is a `lost` item
    (reason in_flight), with the bytes it moved."""

    def feed(self, record: object) -> Sequence[object]:
        if isinstance(record, UnseenCall):
            log.debug("pid %d tid %d: a %s of %d bytes began before the probes", record.pid,
                      record.tid, "Read" if record.direction is Direction.RECV else "Write",
                      record.nbytes)
            return (Lost(record.timestamp_ns, LossReason.IN_FLIGHT, 1, record.nbytes,
                         pid=record.pid, comm=record.comm),)
        return ()

    def expire(self, now_ns: int) -> Sequence[object]:
        return ()

    def flush(self) -> Sequence[object]:
        return ()


def _decode_secret(raw: bytes, _clock: Clock) -> object:
    return decode_keylog(raw)


@dataclass(frozen=True, slots=True)
class WallPacket:
    """A packet and its capture time since the epoch."""

    packet: TcPacket
    wall_ns: int


def _decode_packet(raw: bytes, clock: Clock) -> object:
    packet = decode_packet(raw)
    return WallPacket(packet, clock.to_epoch(packet.timestamp_ns))


class PcapProcessor:
    """Packets and secrets into one pcapng. Packets are held PCAP_HOLD_NS so that a
    secret read a little after them (another ring) is written first."""

    def __init__(self, writer: PcapngWriter, ifname: str, *, loopback: bool) -> None:
        self.writer = writer
        self.interface = writer.interface(ifname)
        self.loopback = loopback
        self._seen: set[tuple[str, bytes]] = set()

    def feed(self, record: object) -> Sequence[object]:
        if isinstance(record, WallPacket):
            packet = record.packet
            # On loopback each packet crosses egress, then ingress: one copy is it.
            if self.loopback and packet.direction != TC_EGRESS:
                return ()
            self.writer.write_packet(self.interface, record.wall_ns, packet.data,
                                     packet.length)
            return ()
        if isinstance(record, KeylogSecret):
            key = (record.label, record.client_random)
            if key not in self._seen:
                self._seen.add(key)
                self.writer.write_secrets([record.line()])
            return ()
        if isinstance(record, KeylogFailure):
            log.warning("secret %s of pid %d not copied: %s", record.label, record.pid,
                        record.reason)
            return (Lost(0, LossReason.READ_FAULT, 1, 0, pid=record.pid, comm=record.comm),)
        return ()

    def expire(self, now_ns: int) -> Sequence[object]:
        self.writer.release(now_ns)
        return ()

    def flush(self) -> Sequence[object]:
        self.writer.flush()
        return ()


@dataclass(frozen=True, slots=True)
class TcAttach:
    """A TC clsact filter of tc.bpf.o on one interface and direction."""

    program: str
    interface: str
    direction: str
    object: str | None = "tc.bpf.o"
    label: str = ""

    def attach(self, loaded: LoadedObject, pid: int) -> Undo:
        return loaded.attach_tc(self.program, self.interface, self.direction)


@register("gotls")
class GoTlsModule(Module):
    """Capture TLS plaintext or secrets of Go programs."""

    config_type: ClassVar[type[GlobalConfig]] = GoTlsConfig
    object_file: ClassVar[str] = "gotls.bpf.o"
    spare_ring_map: ClassVar[str | None] = "spare_closes"
    summary: ClassVar[str] = "capture TLS plaintext or keys of Go programs (crypto/tls)"

    def __init__(self, config: GlobalConfig) -> None:
        if not isinstance(config, GoTlsConfig):
            raise ConfigError(f"gotls needs a GoTlsConfig, got {type(config).__name__}")
        super().__init__(config)
        self.go_config = config
        self.targets: list[GoTarget] = []
        self._keylog: KeylogWriter | None = None
        self._pcap: PcapngWriter | None = None
        self._loopback = False
        if config.model is not CaptureModel.TEXT:
            # The mode picks the object's part, and so its counters: per instance.
            self.stats_layout = KEYLOG_STATS  # type: ignore[misc]
            self.spare_ring_map = None  # type: ignore[misc]

    # ----- command line -----------------------------------------------------------------

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--elfpath", metavar="PATH",
            help="the Go program to hook; default: every running Go program with crypto/tls",
        )
        parser.add_argument(
            "-m", "--model", default="text", choices=[m.value for m in CaptureModel],
            help="text = plaintext of crypto/tls reads and writes (default); keylog = "
            "the TLS secrets into -k FILE (NSS key log format)",
        )
        parser.add_argument("-k", "--keylogfile", metavar="FILE",
                            help="key log file written in -m keylog")
        parser.add_argument("-w", "--pcapfile", metavar="FILE",
                            help="pcapng file written in -m pcap (packets and secrets)")
        parser.add_argument("-i", "--ifname", default="lo", metavar="IFACE",
                            help="-m pcap: the interface to capture packets on (default lo)")
        parser.add_argument(
            "--kernel-call-limit", type=int, default=4 << 20, metavar="BYTES",
            help="bytes copied per Read/Write in the kernel (default 4 MiB); more is cut, "
            "flagged 'truncated' and counted",
        )

    @classmethod
    def config_from_args(cls, args: argparse.Namespace, common: dict[str, Any]) -> GlobalConfig:
        return GoTlsConfig(
            **common, elfpath=args.elfpath, model=CaptureModel(args.model),
            keylog_file=args.keylogfile, pcap_file=args.pcapfile,
            kernel_call_limit=args.kernel_call_limit, ifname=args.ifname,
        )

    # ----- lifecycle hooks --------------------------------------------------------------

    def prepare(self) -> None:
        config = self.go_config
        if config.elfpath is not None:
            path = Path(config.elfpath)
            if not path.exists():
                raise LibraryNotFound(f"--elfpath {path}: no such file")
            try:
                self.targets.append(inspect_go_binary(path))
            except LibraryNotFound as error:
                raise LibraryNotFound(f"--elfpath {error}") from None
        else:
            if config.pid and not (PROC / str(config.pid)).exists():
                raise ConfigError(f"-p {config.pid}: no such process")
            seen: set[tuple[int, int]] = set()
            for path in running_go_programs(pid=config.pid or None):
                try:
                    target = inspect_go_binary(path)
                except EcaptureError as error:
                    log.info("not hooking %s: %s", path.resolve(), error)
                    continue
                stat = path.stat()
                if (stat.st_dev, stat.st_ino) not in seen:
                    seen.add((stat.st_dev, stat.st_ino))
                    self.targets.append(target)
            if not self.targets:
                raise LibraryNotFound("no running Go program with crypto/tls found; "
                                      "pass --elfpath PATH")
        for target in self.targets:
            if config.model is not CaptureModel.TEXT and target.keylog_entry is None:
                raise LibraryNotFound(f"{target.path}: no {KEYLOG} to hook for -m keylog")
            log.info(
                "%s: %s%s; Write at %#x (%d RETs), Read at %#x (%d RETs)",
                target.path, target.version, ", stripped: functions from .gopclntab"
                if target.stripped else "", target.write_entry, len(target.write_returns),
                target.read_entry, len(target.read_returns),
                extra={"capture_module": self.name},
            )
        if config.model is CaptureModel.KEYLOG and config.keylog_file:
            from ecapture.output.keylog import KeylogWriter

            self._keylog = KeylogWriter(config.keylog_file, flag="--keylogfile")
            self._stack.callback(self._keylog.close)
        if config.model is CaptureModel.PCAP and config.pcap_file:
            try:
                self._loopback = is_loopback(config.ifname)
            except (OSError, EcaptureError) as error:
                raise ConfigError(f"-i {config.ifname}: no such interface ({error})") from None
            for removed in remove_leftover_filters(config.ifname, TC_PROGRAMS):
                log.info("removed a filter a killed run left: %s", removed)
            from ecapture.output.pcapng import PcapngWriter

            self._pcap = PcapngWriter(config.pcap_file, hold_ns=PCAP_HOLD_NS)
            self._stack.callback(self._pcap.close)

    def bpf_objects(self) -> Sequence[BpfObject]:
        if self.go_config.model is CaptureModel.PCAP:
            return (BpfObject(self.object_file, (Reader("keys", sized_by_mapsize=False),),
                              programs=KEYLOG_PROGRAMS),
                    BpfObject(TC_OBJECT, (Reader("packets"),)))
        if self.go_config.model is CaptureModel.KEYLOG:
            return (BpfObject(self.object_file, (Reader("keys", sized_by_mapsize=False),),
                              programs=KEYLOG_PROGRAMS),)
        return (BpfObject(self.object_file, (Reader("events"),), programs=TEXT_PROGRAMS),)

    def probes(self) -> Sequence[ProbeSpec]:
        specs: list[ProbeSpec] = []
        for target in self.targets:
            name = target.path.name
            if self.go_config.model is not CaptureModel.TEXT:
                assert target.keylog_entry is not None
                specs.append(ProbeSpec("go_write_key_log", target.path, target.keylog_entry,
                                       label=f"{name}:{KEYLOG}"))
                continue
            specs.append(ProbeSpec("go_write_enter", target.path, target.write_entry,
                                   label=f"{name}:{WRITE}"))
            specs.append(ProbeSpec("go_read_enter", target.path, target.read_entry,
                                   label=f"{name}:{READ}"))
            for offset in target.write_returns:
                specs.append(ProbeSpec("go_call_return", target.path, offset,
                                       cookie=COOKIE_WRITE, label=f"{name}:{WRITE} RET"))
            for offset in target.read_returns:
                specs.append(ProbeSpec("go_call_return", target.path, offset,
                                       cookie=COOKIE_READ, label=f"{name}:{READ} RET"))
            if target.handshake_entry is not None and target.handshake_returns:
                specs.append(ProbeSpec("go_handshake_enter", target.path,
                                       target.handshake_entry, label=f"{name}:{HANDSHAKE}"))
                specs.extend(ProbeSpec("go_handshake_return", target.path, offset,
                                       label=f"{name}:{HANDSHAKE} RET")
                             for offset in target.handshake_returns)
        return specs

    def auto_attached_programs(self) -> Sequence[str]:
        if self.go_config.model is not CaptureModel.TEXT:
            return ()
        return ("go_sock_send", "go_sock_recv", "sock_state")

    def attach_steps(self) -> Sequence[AttachStep]:
        steps: list[AttachStep] = list(super().attach_steps())
        if self.go_config.model is CaptureModel.PCAP:
            ifname = self.go_config.ifname
            steps += [SectionAttach(name, object=TC_OBJECT) for name in OWNER_PROGRAMS]
            steps += [TcAttach("ecap_tc_egress", ifname, "egress"),
                      TcAttach("ecap_tc_ingress", ifname, "ingress")]
        return steps

    def constants(self) -> Mapping[str, int | bytes]:
        if self.go_config.model is not CaptureModel.TEXT:
            return {**super().constants()}
        return {**super().constants(), "call_limit": self.go_config.kernel_call_limit}

    def decoders(self) -> Mapping[int, Decoder] | None:
        if self.go_config.model is CaptureModel.PCAP:
            return {RECORD_KEYLOG_SECRET: _decode_secret, RECORD_TC_PACKET: _decode_packet}
        if self.go_config.model is CaptureModel.KEYLOG:
            return {RECORD_KEYLOG_SECRET: _decode_secret}
        return {RecordKind.TLS_DATA: decode_record, RecordKind.CONN_CLOSE: decode_record,
                RECORD_GO_UNSEEN: decode_unseen}

    def make_processor(self) -> KeylogProcessor | PcapProcessor | UnseenProcessor:
        if self._pcap is not None:
            return PcapProcessor(self._pcap, self.go_config.ifname, loopback=self._loopback)
        if self._keylog is not None:
            return KeylogProcessor(self._keylog)
        return UnseenProcessor()

    def make_tracker(self) -> ConnectionTracker | None:
        if self.go_config.model is not CaptureModel.TEXT:
            return None
        from ecapture.processor.tracker import ConnectionTracker

        return ConnectionTracker()

    def summary_counts(self) -> str:
        pipeline = self._pipeline
        if pipeline is None:
            return ""
        if self._keylog is not None:
            return (f"{self._keylog.written} secrets written to {self._keylog.path}, "
                    f"{self._keylog.duplicates} repeated")
        if self._pcap is not None:
            return (f"{self._pcap.packets} packets and {self._pcap.secrets_blocks} secrets "
                    f"blocks written to {self._pcap.path}")
        counters = pipeline.counters
        return (f"{counters.data_bytes} payload bytes, {counters.http_exchanges} http exchanges, "
                f"{counters.connections_closed} connections closed")


__all__ = ["GoTlsConfig", "GoTlsModule", "inspect_go_binary", "running_go_programs"]
