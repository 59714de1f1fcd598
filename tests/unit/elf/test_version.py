"""TLS library flavor and version, compared with what the libraries say about themselves."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ecapture.elf.symbols import Executable
from ecapture.elf.version import detect_ssl_version, find_version_text, ssl_flavor

from .conftest import BORINGSSL, LIBCRYPTO3, LIBSSL3, MULTIARCH, require_file

NODE = Path("/usr/bin/node")


def openssl_library_version() -> str:
    """The libcrypto version the `openssl` tool reports ("Library: OpenSSL 3.0.N ...")."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl tool is not installed")
    output = subprocess.run(
        ["openssl", "version"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    match = re.search(r"Library: OpenSSL (\S+)", output) or re.match(r"OpenSSL (\S+)", output)
    assert match is not None, output
    return match[1]


def test_system_openssl_version_comes_from_libcrypto() -> None:
    require_file(LIBSSL3)
    found = detect_ssl_version(LIBSSL3)
    assert found.flavor == "openssl"
    assert found.version == openssl_library_version()
    assert found.source.name == "libcrypto.so.3"
    assert found.source.resolve() == require_file(LIBCRYPTO3).resolve()


def test_libcrypto_itself_carries_the_version() -> None:
    assert detect_ssl_version(require_file(LIBCRYPTO3)).version == openssl_library_version()


def test_boringssl_flavor_without_version() -> None:
    found = detect_ssl_version(require_file(BORINGSSL))
    assert (found.flavor, found.version, found.source) == ("boringssl", None, BORINGSSL)
    assert ssl_flavor(Executable(BORINGSSL)) == "boringssl"


def test_openssl_is_not_mistaken_for_boringssl() -> None:
    assert ssl_flavor(Executable(require_file(LIBSSL3))) == "openssl"


def test_nss_and_libc_are_unknown() -> None:
    for path in (MULTIARCH / "libssl3.so", MULTIARCH / "libc.so.6"):
        found = detect_ssl_version(require_file(path))
        assert (found.flavor, found.version) == ("unknown", None)


def test_library_without_its_libcrypto_is_unknown(tmp_path: Path) -> None:
    """A libssl copied away from its libcrypto, whose soname the linker cannot find."""
    original = require_file(LIBSSL3)
    data = bytearray(original.read_bytes())
    # Rename DT_NEEDED libcrypto.so.3 -> libcrypto.so.9 (same length) so no lookup succeeds.
    index = data.find(b"libcrypto.so.3\0")
    assert index != -1
    data[index : index + 14] = b"libcrypto.so.9"
    copy = tmp_path / "libssl.so.3"
    copy.write_bytes(bytes(data))
    assert detect_ssl_version(copy).flavor == "unknown"


def test_embedded_openssl_version_matches_node() -> None:
    node = require_file(NODE)
    if not Executable(node).exports_function("SSL_write"):
        pytest.skip(f"{node} links OpenSSL dynamically")
    reported = subprocess.run(
        [str(node), "-p", "process.versions.openssl"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.strip()
    found = detect_ssl_version(node)
    assert (found.flavor, found.source) == ("openssl", node)
    assert found.version is not None and reported.startswith(found.version)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\0OpenSSL 3.0.22 25 Aug 2026\0", "3.0.22"),
        (b"needs OpenSSL 1.0.2 or later\0OpenSSL 1.1.1w  11 Sep 2023\0", "1.1.1w"),
        (b"OpenSSL 3.2.0-alpha1 7 Sep 2023", "3.2.0"),
        (b"OpenSSL 3.0.2 is required", None),
        (b"LibreSSL 3.8.2", None),
    ],
)
def test_version_text(data: bytes, expected: str | None) -> None:
    assert find_version_text(data) == expected
