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

A process's SSL layer id is learnt from its SSL_ImportFD calls, and for
processes already running at start (a server that imported its listening
socket long ago: accepted sockets inherit the layer without SSL_ImportFD)
read from their memory at the address src/ecapture/elf/nss_layer.py proves.
PR_Close ends the connection as SSL_free does (close cause "ssl_free").

Text mode only: NSS keeps its secrets in PKCS#11 handles and Debian builds it
without SSLKEYLOGFILE support, so there are no keys to write.
"""

from __future__ import annotations

import argparse
import logging
import os
import struct
from dataclasses import dataclass
from typing import Any, ClassVar

from ecapture.config import CaptureModel, GlobalConfig
from ecapture.errors import ConfigError, EcaptureError
from ecapture.modules.libtls import Hook, LibrarySpec, LibraryTlsModule, check_call_limit
from ecapture.modules.registry import register

log = logging.getLogger(__name__)
IDENTITY_MAP = "nss_ssl_identity"  # tls.bpf.c: tgid -> the SSL layer's identity

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

    def after_attach(self) -> None:
        """Tell the kernel side the SSL layer id of each process already running."""
        loaded = self._loaded
        if loaded is None:
            return
        from ecapture.elf.nss_layer import find_ssl_layer_id  # pyelftools, capstone

        identities = loaded.map(IDENTITY_MAP)
        known = 0
        for target in self.targets.get(NSS_SSL.flag, []):
            try:
                vaddr = find_ssl_layer_id(target.path)
            except (EcaptureError, OSError) as error:
                log.warning("%s: ssl_layer_id not found (%s): processes already running "
                            "(%s) are captured from their next SSL_ImportFD only", target.path,
                            error, ", ".join(map(str, target.pids)))
                continue
            inode = os.stat(target.path).st_ino
            for pid in target.pids:
                identity = read_identity(pid, inode, vaddr)
                if identity is None:
                    log.debug("pid %d: no SSL layer id yet", pid)
                    continue
                identities.update(struct.pack("<I", pid), struct.pack("<i", identity))
                known += 1
        log.info("NSS SSL layer id read from %d running processes", known,
                 extra={"capture_module": self.name, "count": known})


def read_identity(pid: int, inode: int, vaddr: int) -> int | None:
    """ssl_layer_id in process `pid` (its libssl3 is the file `inode`, loaded at the
    start of its offset-0 mapping: a shared object's first PT_LOAD is at 0), or None
    when unreadable or not yet assigned (0: NSS has not set up its layer)."""
    try:
        with open(f"/proc/{pid}/maps") as maps:
            lines = maps.read().splitlines()
        base = None
        for line in lines:
            fields = line.split(maxsplit=5)
            if len(fields) >= 6 and int(fields[4]) == inode and int(fields[2], 16) == 0:
                base = int(fields[0].split("-")[0], 16)
                break
        if base is None:
            return None
        with open(f"/proc/{pid}/mem", "rb") as mem:
            mem.seek(base + vaddr)
            raw = mem.read(4)
    except (OSError, ValueError):
        return None  # gone, or not ours to read
    if len(raw) != 4:
        return None
    identity: int = struct.unpack("<i", raw)[0]
    return identity if identity > 0 else None
