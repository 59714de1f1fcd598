"""The key-log probe and the TC packet capture, loaded through the wrapper without a module.

Shared by test_keylog_hook.py and test_tc_pcapng.py: keylog.bpf.o attached at
the hook src/ecapture/elf/keylog_hook.py finds in each library present, and
tc.bpf.o on an interface with its socket-owner programs.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ecapture.bpf import LoadedObject, ObjectSpec, RingReader
from ecapture.bpf.tc import remove_leftover_filters
from ecapture.elf.keylog_hook import Convention, find_keylog_hook
from ecapture.output.keylog import KeylogWriter
from ecapture.secrets import KeylogFailure, KeylogSecret, decode_keylog

from .capture import BTF_PATH, REPO_ROOT
from .targets import BORINGSSL_LIBSSL

OBJECTS = REPO_ROOT / "src" / "ecapture" / "objects"
KEYLOG_OBJECT = OBJECTS / "keylog.bpf.o"
TC_OBJECT = OBJECTS / "tc.bpf.o"
LIBSSL3 = Path("/usr/lib/x86_64-linux-gnu/libssl.so.3")
TC_PROGRAMS = frozenset({"ecap_tc_ingress", "ecap_tc_egress"})
OWNER_PROGRAMS = ("owner_on_send", "owner_on_recv", "owner_on_connect")
WAIT_S = 10.0


def skip_unless_bpf(*objects: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    if not BTF_PATH.exists():
        pytest.skip(f"no kernel BTF at {BTF_PATH}")
    for path in objects:
        if not path.is_file():
            pytest.skip(f"{path} is not built (make bpf)")


class KeyProbe:
    """The loaded object with its uprobes, and every line its records became."""

    def __init__(self, loaded: LoadedObject, reader: RingReader, keylog: Path) -> None:
        self.loaded = loaded
        self.reader = reader
        self.path = keylog
        self.writer = KeylogWriter(str(keylog))
        self.failures: list[KeylogFailure] = []
        self.secrets: list[KeylogSecret] = []

    def drain(self, timeout_ms: int = 10) -> list[KeylogSecret]:
        """Read what is pending; the secrets written to our key log for the first time."""
        new = []
        for record in self.reader.poll(timeout_ms):
            assert isinstance(record, bytes)
            decoded = decode_keylog(record)
            if isinstance(decoded, KeylogFailure):
                self.failures.append(decoded)
                continue
            self.secrets.append(decoded)
            if self.writer.write(decoded):
                new.append(decoded)
        return new

    def lines(self) -> set[str]:
        return set(self.path.read_text().splitlines())

    def wait_for(self, wanted: set[str]) -> set[str]:
        """Poll until every wanted line is in our key log (or time is up); the missing."""
        deadline = time.monotonic() + WAIT_S
        while True:
            self.drain()
            missing = wanted - self.lines()
            if not missing or time.monotonic() > deadline:
                return missing


@contextlib.contextmanager
def key_probe(keylog: Path) -> Iterator[KeyProbe]:
    skip_unless_bpf(KEYLOG_OBJECT)
    if not LIBSSL3.is_file():
        pytest.skip(f"{LIBSSL3} is absent (Debian package libssl3)")
    with ObjectSpec.open(KEYLOG_OBJECT).load() as loaded:
        openssl = find_keylog_hook(LIBSSL3)
        assert openssl.convention is Convention.NSS_KEYLOG_INT
        loaded.attach_uprobe("on_nss_keylog_int", LIBSSL3, offset=openssl.file_offset)
        if BORINGSSL_LIBSSL.is_file():
            boringssl = find_keylog_hook(BORINGSSL_LIBSSL)
            assert boringssl.convention is Convention.LOG_SECRET
            loaded.attach_uprobe(
                "on_ssl_log_secret", BORINGSSL_LIBSSL, offset=boringssl.file_offset,
                cookie=boringssl.cookie,
            )
        probe = KeyProbe(loaded, loaded.ring_reader("keys"), keylog)
        try:
            yield probe
        finally:
            probe.writer.close()


@contextlib.contextmanager
def packet_capture(interface: str) -> Iterator[LoadedObject]:
    """tc.bpf.o on `interface` (both directions) and its socket-owner programs."""
    skip_unless_bpf(TC_OBJECT)
    remove_leftover_filters(interface, TC_PROGRAMS)
    with ObjectSpec.open(TC_OBJECT).load() as loaded:
        for name in OWNER_PROGRAMS:
            loaded.attach(name)
        loaded.attach_tc("ecap_tc_egress", interface, "egress")
        loaded.attach_tc("ecap_tc_ingress", interface, "ingress")
        yield loaded
