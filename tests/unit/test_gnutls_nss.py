"""`ecapture gnutls` and `ecapture nss` without root: flags, refusals, library plans,
and where NSS's libssl3.so keeps ssl_layer_id (checked against objdump)."""

from __future__ import annotations

import ctypes
import itertools
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ecapture.config import CaptureModel
from ecapture.elf.gnutls_keylog import find_gnutls_keylog
from ecapture.elf.ldcache import find_library
from ecapture.elf.nss_layer import find_ssl_layer_id
from ecapture.errors import ConfigError, EcaptureError, SymbolNotFound
from ecapture.modules.gnutls import GNUTLS, GnutlsConfig, GnutlsKeylogModule, GnutlsModule
from ecapture.modules.libtls import LibraryTlsModule
from ecapture.modules.nss import NSPR, NSS_SSL, NssConfig, read_identity
from ecapture.modules.registry import module_class


def system(soname: str) -> Path:
    path = find_library(soname)
    if path is None:
        pytest.skip(f"{soname} is not installed (make deps installs it)")
    return path.resolve()


def test_registered_names() -> None:
    assert module_class("gnutls") is GnutlsModule
    assert module_class("nspr") is module_class("nss")


@pytest.mark.parametrize("model", [CaptureModel.KEYLOG, CaptureModel.PCAP])
def test_nss_is_text_only_and_says_why(model: CaptureModel) -> None:
    with pytest.raises(ConfigError, match=r"PKCS#11 handles.*use -m text"):
        NssConfig(model=model)


def test_gnutls_modes() -> None:
    with pytest.raises(ConfigError, match="-m pcap needs -w/--pcapfile"):
        GnutlsConfig(model=CaptureModel.PCAP)
    with pytest.raises(ConfigError, match="needs -k/--keylogfile"):
        GnutlsConfig(model=CaptureModel.KEYLOG)
    keylog = GnutlsConfig(model=CaptureModel.KEYLOG, keylog_file="/tmp/k")
    assert type(GnutlsModule(keylog)) is GnutlsKeylogModule
    assert type(GnutlsModule(GnutlsConfig())) is GnutlsModule


def test_gnutls_keylog_hook_matches_objdump() -> None:
    """The call after CLIENT_RANDOM's load, and the client random's offset in
    gnutls_session_get_random, as objdump reads them."""
    if shutil.which("objdump") is None:
        pytest.skip("needs objdump (binutils)")
    path = system("libgnutls.so.30")
    hook = find_gnutls_keylog(path)
    strings = subprocess.run(["strings", "-t", "x", str(path)], check=True,
                             capture_output=True, text=True, timeout=60).stdout
    label = next(int(line.split()[0], 16) for line in strings.splitlines()
                 if line.split()[1:] == ["CLIENT_RANDOM"])
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(path)], check=True,
                         capture_output=True, text=True, timeout=120).stdout.splitlines()
    calls = set()
    for index, line in enumerate(out):
        if re.search(rf"lea\s+0x[0-9a-f]+\(%rip\),%rsi\s+# {label:x} ", line):
            following = next(later for later in out[index:index + 12] if "\tcall " in later)
            calls.add(int(following.split("call")[1].split()[0], 16))
        if "<gnutls_session_get_random@@" in line and line.endswith(">:"):
            lea = next(later for later in out[index:index + 6] if "lea " in later)
            random_offset = int(re.search(r"lea\s+(0x[0-9a-f]+)\(%rdi\)", lea).group(1), 16)
    assert calls == {hook.vaddr}
    assert hook.random_offset == random_offset


@pytest.mark.parametrize("limit", [0, (1 << 30) + 1])
def test_call_limit_bounds(limit: int) -> None:
    with pytest.raises(ConfigError, match="--kernel-call-limit"):
        NssConfig(kernel_call_limit=limit)


def test_gnutls_plan_has_every_data_function() -> None:
    path = system("libgnutls.so.30")
    hooked = LibraryTlsModule._plan(GNUTLS, path)
    symbols = {hook.symbol for hook, _ in hooked.offsets}
    assert {"gnutls_record_send", "gnutls_record_recv", "gnutls_deinit"} <= symbols
    assert all(offset > 0 for _, offset in hooked.offsets)


def test_a_library_without_the_functions_is_refused() -> None:
    with pytest.raises(EcaptureError, match="PR_Write is not exported"):
        LibraryTlsModule._plan(NSPR, system("libgnutls.so.30"))


def test_nss_programs_are_those_of_the_object() -> None:
    source = (Path(__file__).parents[2] / "bpf" / "tls.bpf.c").read_text()
    programs = set(re.findall(r"BPF_K(?:RET)?PROBE\((\w+)", source))
    for spec in (NSPR, NSS_SSL, GNUTLS):
        for hook in spec.hooks:
            assert set(hook.programs) <= programs, hook


def objdump_layer_id(path: Path) -> set[int]:
    """Independent of capstone: objdump's own reading of the load before each call."""
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(path)], check=True,
                         capture_output=True, text=True, timeout=120).stdout.splitlines()
    found = set()
    for before, line in itertools.pairwise(out):
        if "<PR_GetIdentitiesLayer@plt>" in line and "call" in line:
            match = re.search(r"mov\s+0x[0-9a-f]+\(%rip\),%esi\s+# ([0-9a-f]+)", before)
            assert match, before
            found.add(int(match.group(1), 16))
    return found


def test_ssl_layer_id_matches_objdump() -> None:
    if shutil.which("objdump") is None:
        pytest.skip("needs objdump (binutils)")
    path = system("libssl3.so")
    assert objdump_layer_id(path) == {find_ssl_layer_id(path)}


def test_ssl_layer_id_refused_without_the_pattern() -> None:
    # libnspr4 defines PR_GetIdentitiesLayer: it has no PLT call of it.
    with pytest.raises(SymbolNotFound):
        find_ssl_layer_id(system("libnspr4.so"))


def test_read_identity_finds_the_load_base() -> None:
    """At vaddr 0 of a loaded shared object is its ELF header: b'\\x7fELF' as an int."""
    path = system("libnspr4.so")
    ctypes.CDLL(str(path))
    value = read_identity(os.getpid(), os.stat(path).st_ino, 0)
    assert value == int.from_bytes(b"\x7fELF", "little")
    assert read_identity(os.getpid(), 1, 0) is None  # no mapping of that file
