"""`ecapture tls -m keylog` and `ecapture tls -m pcap`: the tls module's other two modes.

The libraries are found as in text mode (modules/openssl.py); in each,
src/ecapture/elf/keylog_hook.py finds by disassembly the function that every
secret passes through, and bpf/keylog.bpf.c copies each secret from there. A
library whose hook is not found stops the capture with one line naming it and
its version: no key is read from a guessed place.

keylog: each new secret is appended to -k FILE (NSS key log format).
pcap: bpf/tc.bpf.c copies the packets of -i IFACE (TC clsact ingress and
egress) and each goes to -w FILE.pcapng unless the pcap-filter(7) expression
leaves it out; each new secret goes there first as a Decryption Secrets Block,
and packets wait HOLD_NS for a secret that arrives late, so that
`tshark -r FILE` decrypts with nothing but the file. Each packet's comment
names the process whose socket sent or received it. Filters a killed earlier
run left on the interface are removed on start (bpf/tc.py).

Losses: a secret the kernel could not copy whole, and every kernel counter of
records lost (ring full, copy faults), are `lost` events and in the summary.

What does not depend on the library is here for every module that has such a
key hook: SecretsMode (-m keylog) and PacketsMode (-m pcap) go before the
module's own class (`class TlsPcapModule(PacketsMode, TlsKeylogModule)`, and
modules/gnutls.py's GnutlsPcapModule), which finds the libraries and says which
probes copy the secrets (key_probes) and what the flags named (key_files).
"""

from __future__ import annotations

import abc
import logging
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

import msgspec

from ecapture.bpf import Map
from ecapture.bpf.tc import interface_index, is_loopback
from ecapture.config import CaptureModel, GlobalConfig
from ecapture.elf.discovery import system_libssl
from ecapture.errors import BpfError, ConfigError, EcaptureError, LibraryNotFound, SinkError
from ecapture.modules.base import Module
from ecapture.modules.openssl import DEFAULT_SNAPLEN, OpensslModule
from ecapture.modules.parts import (
    AttachStep,
    BpfObject,
    Decoder,
    ProbeSpec,
    Reader,
    SectionAttach,
    StatsLayout,
    TcFilterAttach,
)
from ecapture.output.base import CutCount
from ecapture.output.pcapng import LINKTYPE_ETHERNET, LINKTYPE_RAW, PcapngWriter
from ecapture.output.render import json_renderer, text_renderer
from ecapture.packets import (
    RECORD_TC_PACKET,
    TC_STAT_LOAD_FAULTS,
    TC_STAT_PACKETS,
    TC_STAT_RING_FULL,
    TC_STAT_RING_FULL_BYTES,
    TcPacket,
    decode_packet,
)
from ecapture.processor.tls_keys import (
    KEYS_RING_FULL,
    PACKET_FAULTS,
    PACKETS_RING_FULL,
    KernelCounter,
    TlsKeysProcessor,
)
from ecapture.secrets import (
    KEYLOG_STAT_RECORDS,
    KEYLOG_STAT_RING_FULL,
    RECORD_KEYLOG_SECRET,
    KeylogSecret,
    decode_keylog,
)

# The key hook is found by disassembly (elf/keylog_hook.py: pyelftools,
# capstone) and the filter compiled by libpcap: loaded by prepare() and
# file_writers() of these modes, not by every command importing this file.
if TYPE_CHECKING:
    from ecapture.elf.keylog_hook import KeylogHook
    from ecapture.output.base import Writer
    from ecapture.output.jsonl import JsonLinesWriter
    from ecapture.output.text import TextWriter
    from ecapture.pcap_filter import PacketFilter
    from ecapture.processor.interface import RecordProcessor
    from ecapture.processor.tracker import ConnectionTracker

log = logging.getLogger(__name__)

KEYLOG_OBJECT = "keylog.bpf.o"
TC_OBJECT = "tc.bpf.o"
# elf/keylog_hook.py Convention (a StrEnum: its members are these strings) → program
PROBE_PROGRAMS = {"nss_keylog_int": "on_nss_keylog_int",
                  "ssl_log_secret": "on_ssl_log_secret"}
TC_PROGRAMS = {"egress": "ecap_tc_egress", "ingress": "ecap_tc_ingress"}
OWNER_PROGRAMS = ("owner_on_send", "owner_on_recv", "owner_on_connect")
# How long a packet waits for a secret that decrypts it (the two rings are read
# one after the other: a secret derived just before a packet was sent may be read
# after it). Wireshark uses a DSB only for the packets after it in the file.
HOLD_NS = 250_000_000
# The kernel counters, in one table: keylog_stats at its own indexes, tc_stats
# from TC_STATS_BASE on (read_kernel_stats).
TC_STATS_BASE = 8
STAT_SECRETS = KEYLOG_STAT_RECORDS
STAT_SECRETS_LOST = KEYLOG_STAT_RING_FULL
STAT_PACKETS = TC_STATS_BASE + TC_STAT_PACKETS
STAT_PACKETS_LOST = TC_STATS_BASE + TC_STAT_RING_FULL
STAT_PACKETS_LOST_BYTES = TC_STATS_BASE + TC_STAT_RING_FULL_BYTES
STAT_PACKET_FAULTS = TC_STATS_BASE + TC_STAT_LOAD_FAULTS
SOCK_OWNER = struct.Struct("<II16s")  # struct sock_owner: pid, tid, comm
MAX_CACHED_OWNERS = 65536  # sock_owners' own size
# /sys/class/net/IFACE/type (include/uapi/linux/if_arp.h) → the pcapng link type
# and the DLT libpcap compiles the filter for (DLT_RAW is 12 on Linux, pcap/dlt.h).
ARPHRD_ETHER = 1
ARPHRD_LOOPBACK = 772
ARPHRD_NONE = 65534
DLT_RAW = 12
LINK_TYPES = {ARPHRD_ETHER: (LINKTYPE_ETHERNET, LINKTYPE_ETHERNET),
              ARPHRD_LOOPBACK: (LINKTYPE_ETHERNET, LINKTYPE_ETHERNET),
              ARPHRD_NONE: (LINKTYPE_RAW, DLT_RAW)}


def _same_file(one: Path, other: Path) -> bool:
    try:
        return one.samefile(other)
    except OSError:
        return False


def interface_link_type(name: str) -> tuple[int, int]:
    """(pcapng link type, DLT for libpcap) of interface `name`: TC hands its
    programs the packet from the MAC header, or from the IP header on a device
    without one (tun, wireguard)."""
    interface_index(name)  # ConfigError when there is no such interface
    try:
        kind = int(Path(f"/sys/class/net/{name}/type").read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"-i {name}: cannot read its link type ({error})") from None
    if kind not in LINK_TYPES:
        raise ConfigError(f"-i {name}: link type {kind} (if_arp.h ARPHRD_*) is not supported; "
                          "Ethernet, loopback and IP-only interfaces are")
    return LINK_TYPES[kind]


@dataclass(frozen=True, slots=True)
class KeyFiles:
    """What a secrets mode writes, from its module's flags: -k FILE, and -m pcap's
    -w FILE, -i IFACE, filter and -s (interface and pcap_file None: no packets)."""

    keylog_file: str | None = None
    pcap_file: str | None = None
    interface: str | None = None
    pcap_filter: str = ""
    snaplen: int = DEFAULT_SNAPLEN


class SecretsMode(Module):
    """-m keylog of any library: the secrets keylog.bpf.o copies at the probes
    key_probes() names, each new one to -k FILE and as a `secret` event.

    A mixin before the library's module class (`class X(SecretsMode, LibModule)`):
    that class finds the libraries (its prepare()), this one replaces its objects,
    attach steps, processor and counters; key_files() and key_probes() say what
    the library's flags and hooks are."""

    spare_ring_map: ClassVar[str | None] = None
    stats_map: ClassVar[str | None] = "keylog_stats"
    stats_layout: ClassVar[StatsLayout | None] = StatsLayout(
        "keylog_stats", {STAT_SECRETS: "secrets submitted", STAT_SECRETS_LOST: "secrets lost"},
    )
    event_types: ClassVar[tuple[type, ...]] = (KeylogSecret, TcPacket)
    objects_before_prepare: ClassVar[bool] = False  # (not measured: loaded by start())
    watched: ClassVar[tuple[KernelCounter, ...]] = (KEYS_RING_FULL,)

    def __init__(self, config: GlobalConfig) -> None:
        super().__init__(config)
        self.processor: TlsKeysProcessor | None = None
        self.keylog_writer: KeylogFileWriter | None = None

    @abc.abstractmethod
    def key_files(self) -> KeyFiles:
        """The files and interface the user named."""

    @abc.abstractmethod
    def key_probes(self) -> Sequence[ProbeSpec]:
        """The uprobes of keylog.bpf.o (object=KEYLOG_OBJECT), computed by prepare()."""

    def init(self, writers: Sequence[Writer]) -> None:
        mine = self.file_writers()
        try:
            super().init([*writers, *mine])
        except BaseException:
            for writer in mine:
                writer.close()
            raise

    def file_writers(self) -> list[Writer]:
        """The files this mode writes (opened now: a refused name fails before any probe)."""
        path = self.key_files().keylog_file
        if path is None:
            return []
        self.keylog_writer = KeylogFileWriter(path)
        return [self.keylog_writer]

    def bpf_objects(self) -> Sequence[BpfObject]:
        return (BpfObject(KEYLOG_OBJECT, (Reader("keys", sized_by_mapsize=False),)),)

    def attach_steps(self) -> Sequence[AttachStep]:
        return tuple(self.key_probes())

    def constants(self) -> dict[str, int | bytes]:
        # keylog.bpf.o and tc.bpf.o have the base's filters, not the text mode's call_limit.
        return dict(Module.constants(self))

    def decoders(self) -> Mapping[int, Decoder] | None:
        return {RECORD_KEYLOG_SECRET: decode_keylog, RECORD_TC_PACKET: decode_packet}

    def make_tracker(self) -> ConnectionTracker | None:
        return None

    def make_processor(self) -> RecordProcessor | None:
        self.processor = self.new_processor()
        return self.processor

    def new_processor(self) -> TlsKeysProcessor:
        return TlsKeysProcessor(kernel_counters=self.loss_counters, watched=self.watched)

    def after_attach(self) -> None:
        """No in-flight report: a call already running cannot hide a secret
        derived after the probe is attached."""

    def read_kernel_stats(self) -> dict[int, int]:
        totals: dict[int, int] = {}
        for object_name, stats_name, base in ((KEYLOG_OBJECT, "keylog_stats", 0),
                                              (TC_OBJECT, "tc_stats", TC_STATS_BASE)):
            loaded = self._objects.get(object_name)
            if loaded is None:
                continue
            stats = loaded.map(stats_name)
            for index in range(stats.max_entries):
                values = stats.lookup_percpu(struct.pack("<I", index))
                totals[base + index] = sum(struct.unpack_from("<Q", v)[0] for v in values)
        return totals

    def loss_counters(self) -> dict[str, int]:
        """The kernel's loss counters by name; after the objects closed, their last
        reading (close() reads them while they are open)."""
        try:
            stats = self.read_kernel_stats()
        except BpfError:
            stats = self._kernel_stats
        return {
            KEYS_RING_FULL.records: stats.get(STAT_SECRETS_LOST, 0),
            PACKETS_RING_FULL.records: stats.get(STAT_PACKETS_LOST, 0),
            PACKETS_RING_FULL.nbytes or "": stats.get(STAT_PACKETS_LOST_BYTES, 0),
            PACKET_FAULTS.records: stats.get(STAT_PACKET_FAULTS, 0),
        }

    def summary_counts(self) -> str:
        processor = self.processor
        if processor is None:
            return ""
        counts = processor.counters
        text = (f"{counts.secrets} secrets ({counts.repeated} seen again, "
                f"{counts.failed} not copied whole)")
        if self.keylog_writer is not None:
            text += f" to {self.keylog_writer.path}"
        return text


class PacketsMode(SecretsMode):
    """-m pcap of any library: the packets of one interface (tc.bpf.o) and the
    secrets that decrypt them, in one pcapng file (and -k FILE when given)."""

    stats_layout: ClassVar[StatsLayout | None] = StatsLayout(
        "keylog_stats", {STAT_SECRETS: "secrets submitted", STAT_SECRETS_LOST: "secrets lost",
                         STAT_PACKETS: "packets submitted", STAT_PACKETS_LOST: "packets lost",
                         STAT_PACKET_FAULTS: "packets not copied"},
    )
    watched: ClassVar[tuple[KernelCounter, ...]] = (KEYS_RING_FULL, PACKETS_RING_FULL,
                                                    PACKET_FAULTS)

    def __init__(self, config: GlobalConfig) -> None:
        super().__init__(config)
        self.pcap_writer: PcapngFileWriter | None = None
        self.linktype = LINKTYPE_ETHERNET
        self.packet_filter: PacketFilter | None = None
        self._owners_map: Map | None = None
        self._owners: dict[int, str] = {}

    def _packet_files(self) -> tuple[KeyFiles, str, str]:
        files = self.key_files()
        # Each module's config refuses -m pcap without -w and -i.
        assert files.interface is not None and files.pcap_file is not None
        return files, files.interface, files.pcap_file

    def file_writers(self) -> list[Writer]:
        files, interface, pcap_file = self._packet_files()
        linktype, dlt = interface_link_type(interface)
        self.linktype = linktype
        if files.pcap_filter:
            from ecapture.pcap_filter import PacketFilter

            self.packet_filter = PacketFilter(files.pcap_filter, linktype=dlt,
                                              snaplen=files.snaplen, flag="filter")
            self._stack.callback(self.packet_filter.close)
            log.info("filter %r: %d BPF instructions", files.pcap_filter,
                     self.packet_filter.instructions, extra={"capture_module": self.name})
        writers = super().file_writers()
        try:
            self.pcap_writer = PcapngFileWriter(pcap_file, interface, linktype,
                                                files.snaplen, self.owner_comment)
        except BaseException:
            for writer in writers:
                writer.close()
            raise
        return [*writers, self.pcap_writer]

    def bpf_objects(self) -> Sequence[BpfObject]:
        return (*super().bpf_objects(), BpfObject(TC_OBJECT, (Reader("packets"),)))

    def attach_steps(self) -> Sequence[AttachStep]:
        _, interface, _ = self._packet_files()
        leftovers = frozenset(TC_PROGRAMS.values())
        return [
            *super().attach_steps(),
            *(SectionAttach(program, object=TC_OBJECT) for program in OWNER_PROGRAMS),
            *(TcFilterAttach(program, interface, direction, object=TC_OBJECT,
                             label=f"tc {direction} {interface}",
                             leftovers=leftovers if direction == "egress" else frozenset())
              for direction, program in TC_PROGRAMS.items()),
        ]

    def constants(self) -> dict[str, int | bytes]:
        return {**super().constants(), "snaplen": self.key_files().snaplen}

    def new_processor(self) -> TlsKeysProcessor:
        files, interface, _ = self._packet_files()
        return TlsKeysProcessor(
            packet_filter=self.packet_filter, loopback=is_loopback(interface),
            snaplen=files.snaplen, kernel_counters=self.loss_counters,
            watched=self.watched, raw_ip=self.linktype == LINKTYPE_RAW,
        )

    def owner_comment(self, cookie: int) -> str | None:
        """"pid N tid T comm NAME" of the process that last used the socket (sock_owners),
        None when unknown; remembered once found."""
        if cookie == 0:
            return None
        known = self._owners.get(cookie)
        if known is not None:
            return known
        loaded = self._objects.get(TC_OBJECT)
        if loaded is None or loaded.closed:
            return None
        try:
            if self._owners_map is None:
                self._owners_map = loaded.map("sock_owners")
            value = self._owners_map.lookup(struct.pack("<Q", cookie))
        except BpfError:
            return None
        if value is None:
            return None
        pid, tid, comm = SOCK_OWNER.unpack_from(value)
        name = comm.split(b"\0", 1)[0].decode(errors="replace")
        text = f"pid {pid} tid {tid} comm {name}"
        if len(self._owners) >= MAX_CACHED_OWNERS:
            self._owners.clear()
        self._owners[cookie] = text
        return text

    def summary_counts(self) -> str:
        processor, writer = self.processor, self.pcap_writer
        if processor is None or writer is None:
            return ""
        counts = processor.counters
        return (f"{super().summary_counts()}; {counts.packets} packets to {writer.path} "
                f"({counts.filtered} left out by the filter, {counts.loopback_copies} loopback "
                f"copies, {counts.cut} cut), {writer.secrets_blocks} secrets blocks")


class TlsKeylogModule(SecretsMode, OpensslModule):
    """`ecapture tls -m keylog`: every TLS secret of OpenSSL and BoringSSL, to a key log."""

    def __init__(self, config: GlobalConfig) -> None:
        super().__init__(config)
        self.keylog_hooks: list[KeylogHook] = []

    def key_files(self) -> KeyFiles:
        config = self.tls_config
        return KeyFiles(config.keylog_file, config.pcap_file, config.interface,
                        config.pcap_filter, config.snaplen)

    def prepare(self) -> None:
        from ecapture.elf.keylog_hook import find_keylog_hook

        super().prepare()
        config = self.tls_config
        model = config.model.value
        system = system_libssl()
        for library in self.libraries:
            try:
                hook = find_keylog_hook(library.path)
            except EcaptureError as error:
                # The library asked for (--libssl, the system one, -p's) must be
                # captured whole; another that some running process maps is left
                # out, said in one warning line (a pip wheel's own OpenSSL...).
                named = config.libssl is not None or bool(config.pid) or (
                    system is not None and _same_file(system, library.path))
                if named:
                    raise LibraryNotFound(
                        f"-m {model}: {error}; no secret of it can be captured") from None
                log.warning("-m %s: not capturing the secrets of %s: %s (pass --libssl to "
                            "choose the library)", model, library.path, error,
                            extra={"capture_module": self.name})
                continue
            self.keylog_hooks.append(hook)
            log.info("%s: secrets from %s", library.path, hook.describe(),
                     extra={"capture_module": self.name})
        if not self.keylog_hooks:
            raise LibraryNotFound(f"-m {model}: no library to capture secrets from")

    def key_probes(self) -> Sequence[ProbeSpec]:
        from ecapture.elf.keylog_hook import Convention

        return [
            ProbeSpec(PROBE_PROGRAMS[hook.convention], hook.library, hook.file_offset,
                      label=f"{hook.library.name}:{hook.convention.value}",
                      cookie=hook.cookie if hook.convention is Convention.LOG_SECRET else 0,
                      object=KEYLOG_OBJECT)
            for hook in self.keylog_hooks
        ]


class TlsPcapModule(PacketsMode, TlsKeylogModule):
    """`ecapture tls -m pcap`: the packets of one interface and the secrets that decrypt
    them, in one pcapng file."""


# -- the files, as writers: a failed write stops the capture like a failed sink --------


class KeylogFileWriter:
    """Each secret item as a key log line."""

    def __init__(self, path: str) -> None:
        from ecapture.output.keylog import KeylogWriter

        self.path = path
        self.cut = CutCount()
        self._writer = KeylogWriter(path, flag="-k/--keylogfile")

    def write(self, item: object) -> None:
        if type(item) is KeylogSecret:
            try:
                self._writer.write(item)
            except OSError as error:
                raise SinkError(f"key log {self.path}: {error.strerror}") from error

    def flush(self) -> None:
        """Every line is written as it comes."""

    def close(self) -> None:
        self._writer.close()


class PcapngFileWriter:
    """Secret items as Decryption Secrets Blocks, packet items as Enhanced Packet
    Blocks (held HOLD_NS for a late secret), in one pcapng file."""

    def __init__(self, path: str, interface: str, linktype: int, snaplen: int,
                 comment: Callable[[int], str | None]) -> None:
        self.path = path
        self.cut = CutCount()
        self._comment = comment
        self._writer = PcapngWriter(path, hold_ns=HOLD_NS, flag="-w/--pcapfile")
        try:
            self._interface = self._writer.interface(interface, linktype=linktype,
                                                     snaplen=snaplen)
        except OSError as error:
            self._writer.close()
            raise ConfigError(f"-w {path}: {error.strerror}") from error

    @property
    def secrets_blocks(self) -> int:
        return self._writer.secrets_blocks

    @property
    def packets(self) -> int:
        return self._writer.packets

    def write(self, item: object) -> None:
        try:
            if type(item) is TcPacket:
                cookie = item.socket_cookie
                known = self._comment(cookie)
                comment = known if known is not None or not cookie else (
                    lambda: self._comment(cookie))
                self._writer.write_packet(self._interface, item.timestamp_ns, item.data,
                                          item.length, comment)
            elif type(item) is KeylogSecret:
                self._writer.write_secrets([item.line()])
        except OSError as error:
            raise SinkError(f"pcapng file {self.path}: {error.strerror}") from error

    def flush(self) -> None:
        try:
            self._writer.release(time.time_ns())
        except OSError as error:
            raise SinkError(f"pcapng file {self.path}: {error.strerror}") from error

    def close(self) -> None:
        try:
            self._writer.close()
        except OSError as error:
            raise SinkError(f"pcapng file {self.path}: {error.strerror}") from error


# -- the event stream: a line per new secret (never the secret itself) ----------------


class SecretEvent(msgspec.Struct):
    type: Literal["secret"]
    module: str
    ts: int
    pid: int
    tid: int
    comm: str
    uid: int
    label: str
    client_random: str  # hex: which handshake; the secret is only in the files


@json_renderer(KeylogSecret)
def _secret_json(writer: JsonLinesWriter, item: KeylogSecret) -> SecretEvent:
    return SecretEvent("secret", writer.module, item.timestamp_ns, item.pid, item.tid,
                       item.comm, item.uid, item.label, item.client_random.hex())


@text_renderer(KeylogSecret)
def _secret_text(writer: TextWriter, item: KeylogSecret) -> str:
    return (f"{writer.time_text(item.timestamp_ns)} pid {item.pid} {item.comm}: secret "
            f"{item.label} {item.client_random.hex()}\n")


@json_renderer(TcPacket)
def _packet_json(writer: JsonLinesWriter, item: TcPacket) -> None:
    """Packets go to the pcapng file only."""


@text_renderer(TcPacket)
def _packet_text(writer: TextWriter, item: TcPacket) -> str:
    return ""


def mode_class(model: CaptureModel) -> type[OpensslModule]:
    return TlsPcapModule if model is CaptureModel.PCAP else TlsKeylogModule
