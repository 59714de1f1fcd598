"""Which TLS library (and which version) a file is, from facts in the file.

OpenSSL states its version only in libcrypto (OPENSSL_VERSION_TEXT, e.g.
"OpenSSL 3.0.22 25 Aug 2026", crypto/cversion.c) or in a binary that links it
statically. BoringSSL has no version string; it is recognised by functions
that only it exports. When neither fact is found the answer is "unknown".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ecapture.elf.ldcache import find_library
from ecapture.elf.symbols import Executable
from ecapture.errors import LibraryNotFound

Flavor = Literal["openssl", "boringssl", "unknown"]

# OPENSSL_VERSION_TEXT: "OpenSSL 3.0.22 25 Aug 2026", "OpenSSL 1.1.1w  11 Sep 2023",
# "OpenSSL 3.2.0-alpha1 ..." — the release date makes a stray "OpenSSL 1.0.2" in a
# message not count.
VERSION_TEXT = re.compile(
    rb"OpenSSL (?P<version>\d+\.\d+\.\d+[a-z]{0,2})(?:-[A-Za-z0-9.]+)? +\d{1,2} [A-Z][a-z]{2} \d{4}"
)
VERSION_MARKER = b"OpenSSL "
# Exported by BoringSSL's libssl and absent from OpenSSL 1.1/3.x (checked against
# Debian's android-libboringssl libssl.so.0 and libssl3's libssl.so.3).
BORINGSSL_SSL_FUNCTIONS = (
    "SSL_CTX_set_strict_cipher_list",
    "SSL_get_curve_id",
    "SSL_CTX_set_grease_enabled",
    "SSL_set_renegotiate_mode",
)
BORINGSSL_MIN_MATCHES = 2  # one could be a coincidence (another fork adding one name)
BORINGSSL_CRYPTO_FUNCTION = "BORINGSSL_self_test"  # BoringSSL's libcrypto


@dataclass(frozen=True, slots=True)
class SslVersion:
    """What `detect_ssl_version` found and in which file it found it."""

    flavor: Flavor
    version: str | None  # "3.0.22"; None for BoringSSL or when unknown
    source: Path  # the file that holds the evidence

    def __str__(self) -> str:
        if self.flavor == "unknown":
            return f"unknown TLS library ({self.source})"
        return f"{self.flavor} {self.version or '(no version string)'} ({self.source})"


def find_version_text(data: bytes) -> str | None:
    """The OpenSSL version in `data` (e.g. "3.0.22"), None when absent."""
    start = data.find(VERSION_MARKER)
    while start != -1:
        match = VERSION_TEXT.match(data, start)
        if match is not None:
            return match["version"].decode("ascii")
        start = data.find(VERSION_MARKER, start + 1)
    return None


def is_boringssl(exe: Executable) -> bool:
    """Does `exe` export BoringSSL-only functions (libssl or libcrypto)?"""
    if exe.exports_function(BORINGSSL_CRYPTO_FUNCTION):
        return True
    found = sum(exe.exports_function(name) for name in BORINGSSL_SSL_FUNCTIONS)
    return found >= BORINGSSL_MIN_MATCHES


def ssl_flavor(exe: Executable) -> Flavor:
    """Cheap flavor check from exported names only: boringssl, else openssl if SSL_write."""
    if is_boringssl(exe):
        return "boringssl"
    return "openssl" if exe.exports_function("SSL_write") else "unknown"


def _rodata_version(exe: Executable) -> str | None:
    rodata = exe.read_section(".rodata")
    return None if rodata is None else find_version_text(rodata)


def _crypto_libraries(exe: Executable) -> list[Path]:
    """The libcrypto files `exe` links against, found as the linker would."""
    found = []
    for soname in exe.needed():
        if soname.startswith("libcrypto"):
            path = find_library(soname, near=exe.path.parent)
            if path is not None:
                found.append(path)
    return found


def detect_ssl_version(lib: Path) -> SslVersion:
    """Flavor and version of the TLS library in `lib` (a libssl or a static embedder)."""
    exe = Executable(lib)
    if is_boringssl(exe):
        return SslVersion("boringssl", None, lib)
    embedded = _rodata_version(exe)
    if embedded is not None:
        return SslVersion("openssl", embedded, lib)
    for crypto_path in _crypto_libraries(exe):
        try:
            crypto = Executable(crypto_path)
        except LibraryNotFound:
            continue
        if is_boringssl(crypto):
            return SslVersion("boringssl", None, crypto_path)
        version = _rodata_version(crypto)
        if version is not None:
            return SslVersion("openssl", version, crypto_path)
    return SslVersion("unknown", None, lib)
