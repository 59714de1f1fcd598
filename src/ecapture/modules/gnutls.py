"""`ecapture gnutls`: plaintext of GnuTLS's record calls (gnutls-cli, wget...).

gnutls_record_send(session, data, size) and gnutls_record_recv(session, data,
size) return the bytes moved as a ssize_t: the plain entry programs of
bpf/tls.bpf.c fit them, the session pointer playing OpenSSL's SSL*. Their
siblings with the same first three arguments (gnutls_record_send2,
gnutls_record_recv_seq) are probed too: when one calls another, the inner
return reports the call and the outer one finds its slot used (one report).
gnutls_handshake names the socket before the first read; gnutls_deinit ends
the session's connection as SSL_free does (close cause "ssl_free").

`-m keylog -k FILE` writes the session secrets instead (TLS 1.2 and 1.3), from
one uprobe on the internal _gnutls_nss_keylog_write that
src/ecapture/elf/gnutls_keylog.py proves, with bpf/keylog.bpf.c's
on_ssl_log_secret (same arguments: session, label, secret, size; the client
random at session + the proven offset, passed as the attach cookie).

`-m pcap -w FILE -i IFACE [FILTER]` writes the packets of IFACE (bpf/tc.bpf.c)
and those same secrets, each a Decryption Secrets Block ahead of the packets it
decrypts, into one pcapng (`tshark -r FILE` decrypts it alone): the generic
part of `ecapture tls -m pcap` (modules/tls_modes.py PacketsMode) with this
module's library discovery and key hook.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ecapture.config import CaptureModel, GlobalConfig
from ecapture.errors import ConfigError, EcaptureError, LibraryNotFound
from ecapture.events import Clock, LossReason, Lost
from ecapture.modules.base import Module, ProbeSpec
from ecapture.modules.libtls import Hook, LibrarySpec, LibraryTlsModule, check_call_limit
from ecapture.modules.openssl import DEFAULT_SNAPLEN
from ecapture.modules.parts import BpfObject, Decoder, Reader, StatsLayout
from ecapture.modules.registry import register
from ecapture.modules.tls_modes import KEYLOG_OBJECT, KeyFiles, PacketsMode
from ecapture.secrets import (
    KEYLOG_STAT_RECORDS,
    KEYLOG_STAT_RING_FULL,
    RECORD_KEYLOG_SECRET,
    KeylogFailure,
    KeylogSecret,
    decode_keylog,
)

# The key-log function is found by disassembly (pyelftools, capstone) and
# the key log written by output/keylog.py: loaded by the modes that need them.
if TYPE_CHECKING:
    from ecapture.elf.gnutls_keylog import GnutlsKeylogHook
    from ecapture.output.keylog import KeylogWriter
    from ecapture.processor.interface import RecordProcessor
    from ecapture.processor.tracker import ConnectionTracker

log = logging.getLogger(__name__)
KEYLOG_PROGRAM = "on_ssl_log_secret"  # keylog.bpf.c: (session, label, secret, size)

GNUTLS = LibrarySpec(
    flag="--gnutls",
    soname="libgnutls.so.30",
    marker="gnutls_record_send",
    what="GnuTLS library",
    hooks=(
        Hook("gnutls_record_send", "send_plain_enter", returns=True),
        Hook("gnutls_record_send2", "send_plain_enter", returns=True, required=False),
        Hook("gnutls_record_recv", "recv_plain_enter", returns=True),
        Hook("gnutls_record_recv_seq", "recv_plain_enter", returns=True, required=False),
        Hook("gnutls_handshake", "handshake_enter", returns=True, required=False),
        Hook("gnutls_deinit", "ssl_free_enter", required=False),
    ),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class GnutlsConfig(GlobalConfig):
    """Configuration of `ecapture gnutls`."""

    gnutls: str | None = None  # None = discover
    model: CaptureModel = CaptureModel.TEXT
    keylog_file: str | None = None
    pcap_file: str | None = None  # -m pcap: the pcapng written
    interface: str | None = None  # -m pcap: the interface whose packets are written
    pcap_filter: str = ""  # -m pcap: a pcap-filter(7) expression; "" = every packet
    snaplen: int = DEFAULT_SNAPLEN  # -m pcap: bytes kept of each packet
    kernel_call_limit: int = 4 << 20

    def __post_init__(self) -> None:
        GlobalConfig.__post_init__(self)
        self._check_model()
        if not 0 < self.snaplen <= DEFAULT_SNAPLEN:
            raise ConfigError(f"gnutls: -s/--snapshot-length must be in 1..{DEFAULT_SNAPLEN} "
                              f"(0: {DEFAULT_SNAPLEN}), got {self.snaplen}")
        check_call_limit(self.kernel_call_limit)

    def _check_model(self) -> None:
        """Each file and packet flag belongs to one model: say which, never ignore it."""
        model = self.model
        if model is CaptureModel.KEYLOG and not self.keylog_file:
            raise ConfigError("gnutls: -m keylog needs -k/--keylogfile FILE")
        if model is CaptureModel.PCAP and not self.pcap_file:
            raise ConfigError("gnutls: -m pcap needs -w/--pcapfile FILE")
        if model is CaptureModel.PCAP and not self.interface:
            raise ConfigError("gnutls: -m pcap needs -i/--ifname INTERFACE")
        if model is CaptureModel.TEXT and self.keylog_file:
            raise ConfigError("gnutls: -k/--keylogfile is for -m keylog (or -m pcap)")
        if model is not CaptureModel.PCAP:
            given = [flag for flag, value in (
                ("-w/--pcapfile", self.pcap_file), ("-i/--ifname", self.interface),
                (f"a packet filter ({self.pcap_filter!r})", self.pcap_filter),
                ("-s/--snapshot-length", self.snaplen != DEFAULT_SNAPLEN)) if value]
            if given:
                raise ConfigError(f"gnutls: {given[0]} is for -m pcap")


@register("gnutls")
class GnutlsModule(LibraryTlsModule):
    """Capture TLS plaintext of programs that use GnuTLS."""

    config_type: ClassVar[type[GlobalConfig]] = GnutlsConfig
    libraries: ClassVar[tuple[LibrarySpec, ...]] = (GNUTLS,)
    summary: ClassVar[str] = "capture TLS plaintext of GnuTLS programs (gnutls-cli, wget)"

    def __new__(cls, config: GlobalConfig) -> GnutlsModule:
        # -m keylog and -m pcap load other objects with other counters: their own classes.
        if cls is GnutlsModule and isinstance(config, GnutlsConfig):
            if config.model is CaptureModel.KEYLOG:
                return super().__new__(GnutlsKeylogModule)
            if config.model is CaptureModel.PCAP:
                return super().__new__(GnutlsPcapModule)
        return super().__new__(cls)

    def __init__(self, config: GlobalConfig) -> None:
        if not isinstance(config, GnutlsConfig):
            raise ConfigError(f"gnutls needs a GnutlsConfig, got {type(config).__name__}")
        super().__init__(config)
        self.gnutls_config = config

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--gnutls", metavar="PATH",
            help="hook this libgnutls.so only; default: the system libgnutls.so.30 plus "
            "every GnuTLS library mapped by running processes",
        )
        parser.add_argument(
            "-m", "--model", default="text", choices=[m.value for m in CaptureModel],
            help="capture model: text = plaintext of GnuTLS record calls (default); "
            "keylog = the TLS 1.2/1.3 secrets, to -k FILE; pcap = the packets of -i IFACE "
            "to -w FILE.pcapng with those secrets in it (tshark -r decrypts it alone)",
        )
        parser.add_argument("-k", "--keylogfile", metavar="FILE",
                            help="-m keylog: the key log file (NSS format, appended, created "
                            "0600); -m pcap: also there")
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
            "--kernel-call-limit", type=int, default=4 << 20, metavar="BYTES",
            help="bytes copied per call in the kernel (default 4 MiB); more is cut, "
            "flagged 'truncated' and counted",
        )

    @classmethod
    def config_from_args(cls, args: argparse.Namespace, common: dict[str, Any]) -> GlobalConfig:
        return GnutlsConfig(
            **common, gnutls=args.gnutls, model=CaptureModel(args.model),
            keylog_file=args.keylogfile, pcap_file=args.pcapfile, interface=args.ifname,
            pcap_filter=" ".join(args.filter),
            snaplen=args.snapshot_length or DEFAULT_SNAPLEN,
            kernel_call_limit=args.kernel_call_limit,
        )

    def library_path(self, spec: LibrarySpec) -> str | None:
        return self.gnutls_config.gnutls

    def call_limit(self) -> int:
        return self.gnutls_config.kernel_call_limit

    def prove_key_hooks(self) -> list[tuple[Path, GnutlsKeylogHook]]:
        """The key-log hook of each library prepare() found; a library named by
        --gnutls must have one, another without is left out (one warning)."""
        from ecapture.elf.gnutls_keylog import find_gnutls_keylog

        found: list[tuple[Path, GnutlsKeylogHook]] = []
        for hooked in self.hooked:
            try:
                hook = find_gnutls_keylog(hooked.path)
            except (EcaptureError, OSError) as error:
                if self.gnutls_config.gnutls is not None:
                    raise LibraryNotFound(
                        f"--gnutls {hooked.path}: its key-log function is not found ({error})"
                    ) from None
                log.warning("no keys from %s: %s", hooked.path, error)
                continue
            found.append((hooked.path, hook))
            log.info("%s: secrets from _gnutls_nss_keylog_write at %#x (%d CLIENT_RANDOM "
                     "sites), client random at session + %#x", hooked.path, hook.vaddr,
                     hook.sites, hook.random_offset, extra={"capture_module": self.name})
        if not found:
            raise LibraryNotFound("no GnuTLS library whose key-log function is proven")
        return found

    def key_probe_specs(self, hooks: Sequence[tuple[Path, GnutlsKeylogHook]],
                        object_name: str | None = None) -> list[ProbeSpec]:
        return [ProbeSpec(KEYLOG_PROGRAM, path, hook.file_offset, cookie=hook.random_offset,
                          label=f"{path.name}:_gnutls_nss_keylog_write@{hook.vaddr:#x}",
                          object=object_name)
                for path, hook in hooks]


class KeylogProcessor:
    """Key-log records → lines of the key log; a secret not copied whole is a `lost` item."""

    def __init__(self, writer: KeylogWriter) -> None:
        self.writer = writer
        self.failures = 0

    def feed(self, record: object) -> Sequence[object]:
        if isinstance(record, KeylogSecret):
            self.writer.write(record)
            return ()
        if isinstance(record, KeylogFailure):
            self.failures += 1
            log.warning("pid %d (%s): %s secret not written: %s", record.pid, record.comm,
                        record.label or "a", record.reason)
            reason = (LossReason.READ_FAULT if "faulted" in record.reason
                      else LossReason.KERNEL_LIMIT)
            return (Lost(time.time_ns(), reason, 1, 0, pid=record.pid, comm=record.comm),)
        return ()

    def expire(self, now_ns: int) -> Sequence[object]:
        return ()

    def flush(self) -> Sequence[object]:
        return ()


class GnutlsKeylogModule(GnutlsModule):
    """`ecapture gnutls -m keylog`: the secrets of every GnuTLS session, in the NSS format."""

    object_file: ClassVar[str] = "keylog.bpf.o"
    ring_map: ClassVar[str] = "keys"
    stats_map: ClassVar[str | None] = "keylog_stats"
    stats_layout: ClassVar[StatsLayout | None] = StatsLayout(
        "keylog_stats", {KEYLOG_STAT_RECORDS: "secrets", KEYLOG_STAT_RING_FULL: "lost"},
        records=KEYLOG_STAT_RECORDS, ring_full_records=KEYLOG_STAT_RING_FULL,
    )
    spare_ring_map: ClassVar[str | None] = None

    def __init__(self, config: GlobalConfig) -> None:
        super().__init__(config)
        self.key_hooks: list[tuple[Path, GnutlsKeylogHook]] = []
        self.writer: KeylogWriter | None = None

    def prepare(self) -> None:
        from ecapture.output.keylog import KeylogWriter

        super().prepare()
        self.key_hooks = self.prove_key_hooks()
        path = self.gnutls_config.keylog_file
        assert path is not None  # GnutlsConfig refuses -m keylog without -k
        self.writer = KeylogWriter(path)
        self._stack.callback(self.writer.close)

    def probes(self) -> Sequence[ProbeSpec]:
        return self.key_probe_specs(self.key_hooks)

    def bpf_objects(self) -> Sequence[BpfObject]:
        return (BpfObject(self.object_file, (Reader(self.ring_map, sized_by_mapsize=False),),
                          programs=frozenset({KEYLOG_PROGRAM})),)

    def auto_attached_programs(self) -> Sequence[str]:
        return ()

    def constants(self) -> dict[str, int | bytes]:
        # keylog.bpf.o has only the base's filters (no per-call copy limit).
        return dict(Module.constants(self))

    def decoders(self) -> Mapping[int, Decoder] | None:
        def decode(raw: bytes, clock: Clock) -> object:
            return decode_keylog(raw)
        return {RECORD_KEYLOG_SECRET: decode}

    def make_processor(self) -> RecordProcessor | None:
        assert self.writer is not None  # prepare() ran first (Module.init)
        return KeylogProcessor(self.writer)

    def make_tracker(self) -> ConnectionTracker | None:
        return None

    def summary_counts(self) -> str:
        writer = self.writer
        if writer is None:
            return ""
        return (f"{writer.written} secrets written to {writer.path} "
                f"({writer.duplicates} seen again)")


class GnutlsPcapModule(PacketsMode, GnutlsModule):
    """`ecapture gnutls -m pcap`: the packets of one interface and the GnuTLS secrets
    that decrypt them, in one pcapng file (and in -k FILE when given)."""

    def __init__(self, config: GlobalConfig) -> None:
        super().__init__(config)
        self.key_hooks: list[tuple[Path, GnutlsKeylogHook]] = []

    def key_files(self) -> KeyFiles:
        config = self.gnutls_config
        return KeyFiles(config.keylog_file, config.pcap_file, config.interface,
                        config.pcap_filter, config.snaplen)

    def prepare(self) -> None:
        super().prepare()
        self.key_hooks = self.prove_key_hooks()

    def key_probes(self) -> Sequence[ProbeSpec]:
        return self.key_probe_specs(self.key_hooks, KEYLOG_OBJECT)
