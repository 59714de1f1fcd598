"""`ecapture gnutls`: plaintext of GnuTLS's record calls (gnutls-cli, wget...).

gnutls_record_send(session, data, size) and gnutls_record_recv(session, data,
size) return the bytes moved as a ssize_t: the plain entry programs of
bpf/tls.bpf.c fit them, the session pointer playing OpenSSL's SSL*. Their
siblings with the same first three arguments (gnutls_record_send2,
gnutls_record_recv_seq) are probed too: when one calls another, the inner
return reports the call and the outer one finds its slot used (one report).
gnutls_handshake names the socket before the first read; gnutls_deinit ends
the session's connection as SSL_free does (close cause "ssl_free").
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, ClassVar

from ecapture.config import CaptureModel, GlobalConfig
from ecapture.errors import ConfigError
from ecapture.modules.libtls import Hook, LibrarySpec, LibraryTlsModule, check_call_limit
from ecapture.modules.registry import register

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
    kernel_call_limit: int = 4 << 20

    def __post_init__(self) -> None:
        GlobalConfig.__post_init__(self)
        if self.model is not CaptureModel.TEXT:
            raise ConfigError(
                f"gnutls: -m {self.model.value} is not available in this version; use -m text"
            )
        check_call_limit(self.kernel_call_limit)


@register("gnutls")
class GnutlsModule(LibraryTlsModule):
    """Capture TLS plaintext of programs that use GnuTLS."""

    config_type: ClassVar[type[GlobalConfig]] = GnutlsConfig
    libraries: ClassVar[tuple[LibrarySpec, ...]] = (GNUTLS,)
    summary: ClassVar[str] = "capture TLS plaintext of GnuTLS programs (gnutls-cli, wget)"

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
            help="capture model: text = plaintext of GnuTLS record calls (default)",
        )
        parser.add_argument("-k", "--keylogfile", metavar="FILE",
                            help="key log file (for -m keylog; not available yet)")
        parser.add_argument(
            "--kernel-call-limit", type=int, default=4 << 20, metavar="BYTES",
            help="bytes copied per call in the kernel (default 4 MiB); more is cut, "
            "flagged 'truncated' and counted",
        )

    @classmethod
    def config_from_args(cls, args: argparse.Namespace, common: dict[str, Any]) -> GlobalConfig:
        return GnutlsConfig(
            **common, gnutls=args.gnutls, model=CaptureModel(args.model),
            keylog_file=args.keylogfile, kernel_call_limit=args.kernel_call_limit,
        )

    def library_path(self, spec: LibrarySpec) -> str | None:
        return self.gnutls_config.gnutls

    def call_limit(self) -> int:
        return self.gnutls_config.kernel_call_limit
