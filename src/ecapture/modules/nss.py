"""`ecapture nss` (alias `nspr`): plaintext of NSS programs (tstclnt, selfserv...).

NSPR's PR_Write/PR_Read/PR_Send/PR_Recv/PR_Writev (libnspr4.so) dispatch
through fd->methods on every kind of PRFileDesc: files, plain sockets and
each layer of an I/O stack. Only calls on NSS's SSL layer carry TLS
plaintext, so bpf/tls.bpf.c (nspr_enter) keeps a call only when its
PRFileDesc's identity is the process's SSL layer id, learnt from what
SSL_ImportFD (libssl3.so) returns: one request is then reported once, and
a program's file and plain-socket I/O never. NSS's own SSL code reaches the
layer below through lower->methods, not through PR_* (libssl3.so imports no
PR_Read/PR_Write/PR_Send/PR_Recv), so no nested call is seen either.

A process's SSL layer id is learnt at its first SSL_ImportFD after the
capture starts: connections imported before then are not captured.
PR_Close ends the connection as SSL_free does (close cause "ssl_free").

Text mode only: NSS keeps its secrets in PKCS#11 handles and Debian builds it
without SSLKEYLOGFILE support, so there are no keys to write.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, ClassVar

from ecapture.config import CaptureModel, GlobalConfig
from ecapture.errors import ConfigError
from ecapture.modules.libtls import Hook, LibrarySpec, LibraryTlsModule, check_call_limit
from ecapture.modules.registry import register

NSPR = LibrarySpec(
    flag="--nspr",
    soname="libnspr4.so",
    marker="PR_Write",
    what="NSPR library",
    hooks=(
        Hook("PR_Write", "nspr_send_enter", returns=True),
        Hook("PR_Send", "nspr_send_enter", returns=True),
        Hook("PR_Read", "nspr_recv_enter", returns=True),
        Hook("PR_Recv", "nspr_recv_enter", returns=True),
        Hook("PR_Writev", "nspr_writev_enter", returns=True, required=False),
        Hook("PR_Close", "ssl_free_enter", required=False),
    ),
)
# NSS's libssl3.so (not OpenSSL's libssl.so.3): SSL_ImportFD tells the SSL layer.
NSS_SSL = LibrarySpec(
    flag="--nss",
    soname="libssl3.so",
    marker="SSL_ImportFD",
    what="NSS SSL library",
    hooks=(
        Hook("SSL_ImportFD", entry_return="nss_import_return"),
        Hook("SSL_ForceHandshake", "handshake_enter", returns=True, required=False),
    ),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class NssConfig(GlobalConfig):
    """Configuration of `ecapture nss`."""

    nspr: str | None = None  # None = discover
    nss: str | None = None
    model: CaptureModel = CaptureModel.TEXT
    kernel_call_limit: int = 4 << 20

    def __post_init__(self) -> None:
        GlobalConfig.__post_init__(self)
        if self.model is not CaptureModel.TEXT:
            raise ConfigError(
                f"nss: -m {self.model.value} is not possible: NSS keeps its secrets in "
                "PKCS#11 handles and Debian's NSS has no SSLKEYLOGFILE; use -m text"
            )
        check_call_limit(self.kernel_call_limit)


@register("nss", "nspr")
class NssModule(LibraryTlsModule):
    """Capture TLS plaintext of programs that use NSS/NSPR."""

    config_type: ClassVar[type[GlobalConfig]] = NssConfig
    libraries: ClassVar[tuple[LibrarySpec, ...]] = (NSPR, NSS_SSL)
    summary: ClassVar[str] = "capture TLS plaintext of NSS/NSPR programs (tstclnt, selfserv)"

    def __init__(self, config: GlobalConfig) -> None:
        if not isinstance(config, NssConfig):
            raise ConfigError(f"nss needs a NssConfig, got {type(config).__name__}")
        super().__init__(config)
        self.nss_config = config

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--nspr", metavar="PATH",
            help="hook this libnspr4.so only; default: the system one plus every NSPR "
            "library mapped by running processes",
        )
        parser.add_argument(
            "--nss", metavar="PATH",
            help="NSS's libssl3.so to learn the SSL layer from; default: found like --nspr",
        )
        parser.add_argument(
            "-m", "--model", default="text", choices=[m.value for m in CaptureModel],
            help="capture model: text only (NSS's secrets stay in PKCS#11 handles)",
        )
        parser.add_argument(
            "--kernel-call-limit", type=int, default=4 << 20, metavar="BYTES",
            help="bytes copied per call in the kernel (default 4 MiB); more is cut, "
            "flagged 'truncated' and counted",
        )

    @classmethod
    def config_from_args(cls, args: argparse.Namespace, common: dict[str, Any]) -> GlobalConfig:
        return NssConfig(
            **common, nspr=args.nspr, nss=args.nss, model=CaptureModel(args.model),
            kernel_call_limit=args.kernel_call_limit,
        )

    def library_path(self, spec: LibrarySpec) -> str | None:
        return self.nss_config.nspr if spec is NSPR else self.nss_config.nss

    def call_limit(self) -> int:
        return self.nss_config.kernel_call_limit
