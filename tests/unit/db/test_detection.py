"""Finding the server binary, and dispatch_command's signature from its symbols."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ecapture.elf.symbols import Executable
from ecapture.errors import LibraryNotFound
from ecapture.modules.database import running_servers
from ecapture.modules.mysqld import SIGNATURE_MARIADB, SIGNATURE_MYSQL, find_dispatch

MARIADB = "_Z16dispatch_command19enum_server_commandP3THDPcjb"
MYSQL = "_Z16dispatch_commandP3THDPK8COM_DATA19enum_server_command"


def shared_object(tmp_path: Path, *symbols: str) -> Path:
    """A small .so exporting functions of these (mangled) names."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        pytest.skip("needs a C compiler (Debian package gcc)")
    source = tmp_path / "server.c"
    source.write_text("".join(
        f'int f{index}(void) __asm__("{name}");\nint f{index}(void) {{ return {index}; }}\n'
        for index, name in enumerate(symbols)))
    output = tmp_path / "server.so"
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(output), str(source)],
                   check=True, timeout=60)
    return output


@pytest.mark.parametrize(("symbol", "signature"),
                         [(MARIADB, SIGNATURE_MARIADB), (MYSQL, SIGNATURE_MYSQL)])
def test_the_signature_comes_from_the_mangled_name(
    tmp_path: Path, symbol: str, signature: int
) -> None:
    executable = Executable(shared_object(tmp_path, symbol, "my_net_write"))
    hook = find_dispatch(executable)
    assert (hook.symbol, hook.signature) == (symbol, signature)
    assert hook.offset == executable.offset_of(symbol)


def test_an_unknown_signature_is_refused_naming_what_was_found(tmp_path: Path) -> None:
    odd = "_Z16dispatch_commandi"
    with pytest.raises(LibraryNotFound, match=odd):
        find_dispatch(Executable(shared_object(tmp_path, odd)))
    with pytest.raises(LibraryNotFound, match="found: none"):
        find_dispatch(Executable(shared_object(tmp_path, "main_loop")))


def test_running_servers_are_found_by_their_executable(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    for pid, target in ((10, "/usr/sbin/mariadbd"), (11, "/usr/bin/bash"),
                        (12, "/usr/lib/postgresql/15/bin/postgres (deleted)")):
        (proc / str(pid)).mkdir(parents=True)
        os.symlink(target, proc / str(pid) / "exe")
    (proc / "self").mkdir()
    found = dict(running_servers(frozenset({"mariadbd", "mysqld", "postgres"}), proc))
    assert sorted(found) == [10, 12]
    # A file not visible here is reached through the process's root.
    expected = (Path("/usr/sbin/mariadbd") if Path("/usr/sbin/mariadbd").is_file()
                else proc / "10" / "root" / "usr/sbin/mariadbd")
    assert found[10] == expected
