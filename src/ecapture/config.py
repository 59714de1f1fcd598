"""Typed, validated configurations: one global part plus one per module.

Configs are frozen; every check names the flag the user typed. They
round-trip through JSON (`to_json`/`from_json`) so the API can send them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Self

import msgspec

from ecapture.errors import ConfigError

# docs/kernel.md#ring-size: 8 MiB rings lose events under load, 64 MiB did not.
DEFAULT_MAPSIZE_KIB = 64 * 1024
# How long a stop may spend writing out what the ring still holds; what is
# left then is counted as lost (reason "stopped"). A full 256 MiB ring of
# 256-byte records took 6.9 s to drain to a JSON file here (671k records).
DEFAULT_DRAIN_TIMEOUT_S = 5.0


class OutputFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


class BtfMode(enum.IntEnum):
    """eCapture's -b/--btf values."""

    AUTO = 0
    CORE = 1
    NON_CORE = 2


class CaptureModel(enum.StrEnum):
    TEXT = "text"
    KEYLOG = "keylog"
    PCAP = "pcap"


class ProbePlacement(enum.StrEnum):
    """Where the TLS data probes sit.

    AUTO probes the internal function that SSL_write/SSL_write_ex (and the
    read pair) call first when the disassembly proves it forwards their
    arguments (its first instruction is emulated by the kernel: ~0.4 us a hit
    instead of ~14 us, docs/kernel.md#uprobe-hit-cost); EXPORTED always probes the exported symbols.
    """

    AUTO = "auto"
    EXPORTED = "exported"


class DataPath(enum.StrEnum):
    """--data-path: who handles each record of a TLS module's JSON output."""

    AUTO = "auto"
    NATIVE = "native"
    PYTHON = "python"


@dataclass(frozen=True, slots=True, kw_only=True)
class GlobalConfig:
    pid: int = 0  # 0 = every process
    uid: int | None = None  # None = every user
    hex: bool = False
    tsize: int = 0  # bytes of payload shown per event; 0 = all
    mapsize_kib: int = DEFAULT_MAPSIZE_KIB
    btf: BtfMode = BtfMode.AUTO
    btf_file: str | None = None
    debug: bool = False
    logaddr: str | None = None
    eventaddr: str | None = None
    output_format: OutputFormat = OutputFormat.TEXT
    har_file: str | None = None
    color: bool | None = None  # None = colour when the output is a terminal
    # Scheduling niceness of the capture process: the traced programs come
    # first when CPUs are short, the ring absorbs the backlog meanwhile
    # (bench, fixed 20k req/s through nginx: p50 268 ms at 0; 12 and 73 ms at 10).
    nice: int = 10
    drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S
    # Which pipeline runs a TLS module with --format json: the Rust core
    # (native), the Python one (the reference), or native when it can (auto).
    data_path: DataPath = DataPath.AUTO

    def __post_init__(self) -> None:
        if self.pid < 0:
            raise ConfigError(f"-p/--pid must be >= 0, got {self.pid}")
        if self.uid is not None and self.uid < 0:
            raise ConfigError(f"-u/--uid must be >= 0, got {self.uid}")
        if self.tsize < 0:
            raise ConfigError(f"-t/--tsize must be >= 0, got {self.tsize}")
        kib = self.mapsize_kib
        # The ring size must be a power-of-two multiple of the page size.
        if kib < 4 or kib & (kib - 1):
            raise ConfigError(f"--mapsize must be a power of two >= 4 (KiB), got {kib}")
        if not 0 < self.drain_timeout_s <= 3600:
            raise ConfigError(
                f"--drain-timeout must be in (0, 3600] seconds, got {self.drain_timeout_s:g}"
            )
        if not -20 <= self.nice <= 19:
            raise ConfigError(f"--nice must be in -20..19, got {self.nice}")
        if self.btf == BtfMode.NON_CORE:
            raise ConfigError(
                "-b 2 (non-CO-RE) is not supported: this build needs kernel BTF "
                "(/sys/kernel/btf/vmlinux) or --btf-file"
            )

    def to_json(self) -> bytes:
        return msgspec.json.encode({"kind": type(self).__name__, **msgspec.to_builtins(self)})

    @classmethod
    def from_json(cls, data: bytes | str) -> Self:
        raw: dict[str, Any] = msgspec.json.decode(data)
        kind = raw.pop("kind", cls.__name__)
        if kind != cls.__name__:
            raise ConfigError(f"configuration is for {kind}, not {cls.__name__}")
        try:
            return msgspec.convert(raw, type=cls)
        except msgspec.ValidationError as error:
            raise ConfigError(f"invalid configuration: {error}") from error
