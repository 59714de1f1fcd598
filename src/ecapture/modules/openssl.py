"""`ecapture tls` (alias `openssl`): plaintext of OpenSSL and BoringSSL calls.

Finds every libssl to hook (the system one, and each libssl or SSL_*-exporting
binary that running processes map, or only --libssl), decides where each probe
sits (src/ecapture/elf/placement.py), and feeds the captured chunks to the
HTTP processor. The kernel side is bpf/tls.bpf.c.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ecapture.config import CaptureModel, GlobalConfig, ProbePlacement
from ecapture.elf.discovery import process_ssl_targets, system_libssl
from ecapture.elf.inflight import InFlightCall, in_flight_calls
from ecapture.elf.placement import CallSemantics, HookPoint, describe_plan, plan_ssl_hooks
from ecapture.elf.symbols import Executable
from ecapture.elf.version import SslVersion, detect_ssl_version
from ecapture.errors import ConfigError, EcaptureError, LibraryNotFound
from ecapture.events import Direction, LossReason, Lost
from ecapture.modules.base import Module, ProbeSpec
from ecapture.modules.registry import register

if TYPE_CHECKING:
    from ecapture.processor.tracker import ConnectionTracker

log = logging.getLogger(__name__)

MAX_KERNEL_CALL_BYTES = 1 << 30
DEFAULT_SNAPLEN = 262144  # tcpdump's default snap length (libpcap MAXIMUM_SNAPLEN)
MODEL_ALIASES = {"key": CaptureModel.KEYLOG}  # eCapture's -m key

# (direction, semantics) → the entry program of bpf/tls.bpf.c
ENTRY_PROGRAMS = {
    (Direction.SEND, CallSemantics.PLAIN): "send_plain_enter",
    (Direction.SEND, CallSemantics.EX): "send_ex_enter",
    (Direction.RECV, CallSemantics.PLAIN): "recv_plain_enter",
    (Direction.RECV, CallSemantics.EX): "recv_ex_enter",
}
RETURN_PROGRAM = "call_return"
HANDSHAKE_PROGRAM = "handshake_enter"
HANDSHAKE_SYMBOL = "SSL_do_handshake"
# Entry probes that end the connection of an SSL* (bpf/tls.bpf.c end_ssl):
# they cover transports without a TCP close (memory BIOs, unix sockets) and
# an SSL* reused for the next connection.
END_PROGRAMS = {"SSL_free": "ssl_free_enter", "SSL_clear": "ssl_clear_enter"}


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsConfig(GlobalConfig):
    """Configuration of `ecapture tls`."""

    libssl: str | None = None  # None = discover
    model: CaptureModel = CaptureModel.TEXT
    keylog_file: str | None = None
    pcap_file: str | None = None
    interface: str | None = None  # -m pcap: the interface whose packets are written
    pcap_filter: str = ""  # -m pcap: a pcap-filter(7) expression; "" = every packet
    snaplen: int = DEFAULT_SNAPLEN  # -m pcap: bytes kept of each packet
    probe_placement: ProbePlacement = ProbePlacement.AUTO
    kernel_call_limit: int = 4 << 20  # bytes copied per SSL call; more is cut and said

    def __post_init__(self) -> None:
        GlobalConfig.__post_init__(self)
        self._check_model()
        if not 0 < self.snaplen <= DEFAULT_SNAPLEN:
            raise ConfigError(f"-s/--snapshot-length must be in 1..{DEFAULT_SNAPLEN} "
                              f"(0: {DEFAULT_SNAPLEN}), got {self.snaplen}")
        if not 0 < self.kernel_call_limit <= MAX_KERNEL_CALL_BYTES:
            raise ConfigError(
                f"--kernel-call-limit must be in 1..{MAX_KERNEL_CALL_BYTES}, "
                f"got {self.kernel_call_limit}"
            )

    def _check_model(self) -> None:
        """Each file and packet flag belongs to one model: say which, never ignore it."""
        model = self.model
        if model is CaptureModel.KEYLOG and not self.keylog_file:
            raise ConfigError("-m keylog needs -k/--keylogfile FILE")
        if model is CaptureModel.PCAP and not self.pcap_file:
            raise ConfigError("-m pcap needs -w/--pcapfile FILE")
        if model is CaptureModel.PCAP and not self.interface:
            raise ConfigError("-m pcap needs -i/--ifname INTERFACE")
        if model is CaptureModel.TEXT and self.keylog_file:
            raise ConfigError("-k/--keylogfile is for -m keylog (or -m pcap)")
        if model is not CaptureModel.PCAP:
            given = [flag for flag, value in (
                ("-w/--pcapfile", self.pcap_file), ("-i/--ifname", self.interface),
                (f"a packet filter ({self.pcap_filter!r})", self.pcap_filter),
                ("-s/--snapshot-length", self.snaplen != DEFAULT_SNAPLEN)) if value]
            if given:
                raise ConfigError(f"{given[0]} is for -m pcap")


@dataclass(frozen=True, slots=True)
class HookedLibrary:
    path: Path
    version: SslVersion
    hooks: tuple[HookPoint, ...]
    # SSL_do_handshake's file offset: probing it names the fd of a connection
    # before its first read (None when the library does not export it).
    handshake_offset: int | None
    # symbol -> file offset of SSL_free/SSL_clear, those the library exports
    end_offsets: tuple[tuple[str, int], ...] = ()


@register("tls", "openssl")
class OpensslModule(Module):
    """Capture TLS plaintext of programs that use OpenSSL or BoringSSL."""

    config_type: ClassVar[type[GlobalConfig]] = TlsConfig
    object_file: ClassVar[str] = "tls.bpf.o"
    spare_ring_map: ClassVar[str | None] = "spare_closes"
    summary: ClassVar[str] = "capture TLS plaintext of OpenSSL/BoringSSL programs"
    # tls.bpf.o and its constants (filters, call_limit) come from the flags:
    # loaded while prepare() finds the libraries and disassembles them.
    objects_before_prepare: ClassVar[bool] = True

    def __new__(cls, config: GlobalConfig) -> OpensslModule:
        """-m keylog and -m pcap are subclasses (modules/tls_modes.py): their own
        objects, counters and files; text mode is this class."""
        if cls is OpensslModule and isinstance(config, TlsConfig) \
                and config.model is not CaptureModel.TEXT:
            from ecapture.modules.tls_modes import mode_class  # imports this module

            return super().__new__(mode_class(config.model))
        return super().__new__(cls)

    def __init__(self, config: GlobalConfig) -> None:
        if not isinstance(config, TlsConfig):
            raise ConfigError(f"tls needs a TlsConfig, got {type(config).__name__}")
        super().__init__(config)
        self.tls_config = config
        self.libraries: list[HookedLibrary] = []

    # ----- command line -----------------------------------------------------------------

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--libssl", metavar="PATH",
            help="hook this libssl.so (or a binary with OpenSSL/BoringSSL built in) only; "
            "default: the system libssl plus every libssl mapped by running processes",
        )
        parser.add_argument(
            "-m", "--model", default="text",
            choices=[*(m.value for m in CaptureModel), *MODEL_ALIASES],
            help="text = plaintext of SSL reads and writes (default); keylog (alias key) = "
            "every TLS secret to -k FILE (NSS key log); pcap = the packets of -i IFACE to "
            "-w FILE.pcapng with their secrets in it (tshark -r decrypts it alone)",
        )
        parser.add_argument("-k", "--keylogfile", metavar="FILE",
                            help="-m keylog: append each new secret to FILE (created 0600); "
                            "-m pcap: also there")
        parser.add_argument("-w", "--pcapfile", metavar="FILE",
                            help="-m pcap: write a pcapng file (created 0600, replaced)")
        parser.add_argument("-i", "--ifname", metavar="IFACE",
                            help="-m pcap: the network interface to capture (TC ingress and "
                            "egress)")
        parser.add_argument(
            "-s", "--snapshot-length", type=int, default=DEFAULT_SNAPLEN, metavar="BYTES",
            help=f"-m pcap: bytes kept of each packet (default {DEFAULT_SNAPLEN}, as tcpdump; "
            "0 = the default); the kernel copies at most 65536, more is counted as cut",
        )
        parser.add_argument(
            "filter", nargs="*", metavar="FILTER",
            help="-m pcap: a pcap-filter(7) expression, as tcpdump takes it "
            "(e.g. tcp port 443); -p/-u choose whose secrets are written",
        )
        parser.add_argument(
            "--probe-placement", default="auto", choices=[p.value for p in ProbePlacement],
            help="auto: probe the internal function SSL_write/SSL_read call first when the "
            "disassembly proves it safe (a cheaper probe hit); exported: the SSL_* symbols",
        )
        parser.add_argument(
            "--kernel-call-limit", type=int, default=4 << 20, metavar="BYTES",
            help="bytes copied per SSL call in the kernel (default 4 MiB); more is cut, "
            "flagged 'truncated' and counted",
        )

    @classmethod
    def config_from_args(cls, args: argparse.Namespace, common: dict[str, Any]) -> GlobalConfig:
        return TlsConfig(
            **common,
            libssl=args.libssl,
            model=MODEL_ALIASES.get(args.model) or CaptureModel(args.model),
            keylog_file=args.keylogfile,
            pcap_file=args.pcapfile,
            interface=args.ifname,
            pcap_filter=" ".join(args.filter),
            snaplen=args.snapshot_length or DEFAULT_SNAPLEN,
            probe_placement=ProbePlacement(args.probe_placement),
            kernel_call_limit=args.kernel_call_limit,
        )

    # ----- lifecycle hooks --------------------------------------------------------------

    def prepare(self) -> None:
        config = self.tls_config
        prefer_internal = config.probe_placement is ProbePlacement.AUTO
        explicit = config.libssl is not None
        seen: set[tuple[int, int]] = set()
        for path in self._candidate_paths():
            try:
                stat = path.stat()
            except OSError as error:
                if explicit:
                    raise LibraryNotFound(f"--libssl {path}: {error.strerror}") from None
                log.debug("skipping %s: %s", path, error)
                continue
            if (stat.st_dev, stat.st_ino) in seen:
                continue
            seen.add((stat.st_dev, stat.st_ino))
            try:
                executable = Executable(path)
                hooks = plan_ssl_hooks(executable, prefer_internal=prefer_internal)
            except EcaptureError as error:
                if explicit:
                    raise LibraryNotFound(
                        f"--libssl {path}: not an OpenSSL/BoringSSL library or program "
                        f"({error})"
                    ) from None
                log.warning("not hooking %s: %s", path, error)
                continue
            version = detect_ssl_version(path)
            handshake = (executable.offset_of(HANDSHAKE_SYMBOL)
                         if executable.has(HANDSHAKE_SYMBOL) else None)
            ends = tuple((symbol, executable.offset_of(symbol)) for symbol in END_PROGRAMS
                         if executable.has(symbol))
            library = HookedLibrary(path, version, tuple(hooks), handshake, ends)
            self.libraries.append(library)
            log.info(
                "%s: %s %s; %s", path, version.flavor, version.version or "(version unknown)",
                describe_plan(hooks), extra={"capture_module": self.name},
            )
        if not self.libraries:
            raise LibraryNotFound(
                "no OpenSSL/BoringSSL library with SSL_read/SSL_write found; pass --libssl PATH"
            )

    def _candidate_paths(self) -> list[Path]:
        config = self.tls_config
        if config.libssl is not None:
            path = Path(config.libssl)
            if not path.exists():
                raise LibraryNotFound(f"--libssl {path}: no such file")
            return [path]
        paths: list[Path] = []
        targets = process_ssl_targets(config.pid or None)
        system = system_libssl()
        if config.pid and not targets:
            if not Path(f"/proc/{config.pid}").exists():
                raise ConfigError(f"-p {config.pid}: no such process")
            log.info("process %d maps no libssl yet; hooking the system library", config.pid)
        if system is not None and (not config.pid or not targets):
            paths.append(system)
        paths.extend(target.path for target in targets)
        return paths

    def probes(self) -> Sequence[ProbeSpec]:
        specs: list[ProbeSpec] = []
        for library in self.libraries:
            for hook in library.hooks:
                label = f"{library.path.name}:{hook.label}"
                specs.append(ProbeSpec(
                    ENTRY_PROGRAMS[(hook.direction, hook.semantics)], library.path,
                    hook.file_offset, label=label,
                ))
                specs.append(ProbeSpec(
                    RETURN_PROGRAM, library.path, hook.file_offset, retprobe=True,
                    label=f"{label} (return)",
                ))
            if library.handshake_offset is not None:
                label = f"{library.path.name}:{HANDSHAKE_SYMBOL}"
                specs.append(ProbeSpec(HANDSHAKE_PROGRAM, library.path,
                                       library.handshake_offset, label=label))
                specs.append(ProbeSpec(RETURN_PROGRAM, library.path, library.handshake_offset,
                                       retprobe=True, label=f"{label} (return)"))
            for symbol, offset in library.end_offsets:
                specs.append(ProbeSpec(END_PROGRAMS[symbol], library.path, offset,
                                       label=f"{library.path.name}:{symbol}"))
        return specs

    def after_attach(self) -> None:
        self._report_calls_in_flight()

    def _report_calls_in_flight(self) -> None:
        """A `lost` item for each SSL call that began before the probes were attached
        (its return is not probed, its bytes never captured): src/ecapture/elf/inflight.py."""
        config = self.tls_config
        began = time.monotonic()
        try:
            calls, scanner = in_flight_calls((library.path for library in self.libraries),
                                             pids=(config.pid,) if config.pid else None)
        except Exception:  # a bug in a best-effort scan must not stop the capture
            log.exception("the in-flight scan failed: SSL calls running at attach go unreported")
            return
        # The kernel side captures only this uid (tls.bpf.c filter_uid): report alike.
        calls = [call for call in calls if config.uid is None or call.uid == config.uid]
        log.info(
            "in-flight scan: %d SSL calls found running at attach (%d processes, %d threads, "
            "%d stacks read in %.1f ms)", len(calls), scanner.processes_scanned,
            scanner.threads_checked, scanner.stacks_read, (time.monotonic() - began) * 1e3,
            extra={"capture_module": self.name, "count": len(calls)},
        )
        for call in calls:
            self._report_in_flight(call)

    def _report_in_flight(self, call: InFlightCall) -> None:
        log.debug("in flight at attach: pid %d tid %d %s fd %d in %s (%s)", call.pid, call.tid,
                  call.function, call.fd, call.syscall, call.library)
        pipeline = self._pipeline
        if pipeline is not None:
            # One call whose length is unknown: 1 record, 0 bytes counted.
            pipeline.report_loss(Lost(time.time_ns(), LossReason.IN_FLIGHT, 1, 0,
                                      pid=call.pid, comm=call.comm, fd=call.fd))

    def auto_attached_programs(self) -> Sequence[str]:
        # The socket of each SSL call (its nested socket I/O), and closes.
        return ("sock_send", "sock_recv", "sock_state")

    def constants(self) -> dict[str, int | bytes]:
        return {**super().constants(), "call_limit": self.tls_config.kernel_call_limit}

    def make_tracker(self) -> ConnectionTracker | None:
        from ecapture.processor.tracker import ConnectionTracker

        return ConnectionTracker()

    def summary_counts(self) -> str:
        pipeline = self._pipeline
        if pipeline is None:
            return "nothing read"
        counters = pipeline.counters
        return (f"{counters.records} records ({counters.data_bytes} payload bytes), "
                f"{counters.http_exchanges} http exchanges, "
                f"{counters.connections_closed} connections closed")
