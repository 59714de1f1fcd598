"""The NSS key log writer and the private-file rules it follows."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ecapture.errors import ConfigError
from ecapture.files import open_private_file
from ecapture.output.keylog import KeylogWriter
from ecapture.secrets import KeylogSecret


def secret(label: str = "CLIENT_RANDOM", random: bytes = b"\x01" * 32,
           value: bytes = b"\x02" * 48) -> KeylogSecret:
    return KeylogSecret(label, random, value, 1, 1, 0, "curl", 0, 7)


def test_lines_are_appended_deduplicated_and_visible_at_once(tmp_path: Path) -> None:
    path = tmp_path / "keys.log"
    path.write_text("# written by the client\n")
    path.chmod(0o400)  # ours, private: appended to, its mode left as it is
    with KeylogWriter(str(path)) as writer:
        assert writer.write(secret())
        assert path.read_text().splitlines()[-1] == f"CLIENT_RANDOM {'01' * 32} {'02' * 48}"
        assert not writer.write(secret(value=b"\x03" * 48))  # same label and random
        assert writer.write(secret("SERVER_TRAFFIC_SECRET_0"))
        assert writer.write(secret(random=b"\x04" * 32))
        assert (writer.written, writer.duplicates) == (3, 1)
    lines = path.read_text().splitlines()
    assert lines[0] == "# written by the client" and len(lines) == 4
    assert stat.S_IMODE(path.stat().st_mode) == 0o400


def test_an_existing_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys.log"
    path.write_text("# written by the client\n")
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="mode 0644"):
        KeylogWriter(str(path), flag="-k")
    assert path.read_text() == "# written by the client\n"


def test_a_new_file_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        KeylogWriter(str(tmp_path / "new.log")).close()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.log").stat().st_mode) == 0o600


def test_a_symlink_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("keep\n")
    link = tmp_path / "keys.log"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match="symbolic link"):
        KeylogWriter(str(link), flag="-k")
    dangling = tmp_path / "dangling.log"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="symbolic link"):
        KeylogWriter(str(dangling))
    assert target.read_text() == "keep\n" and not (tmp_path / "nowhere").exists()


def test_a_fifo_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    # O_WRONLY on a FIFO without a reader would block: O_NONBLOCK is not used, so
    # open a reader first
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(ConfigError, match="FIFO"):
            open_private_file(str(fifo), "-k", append=True)
    finally:
        os.close(reader)


def test_truncating_mode_empties_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "out.pcapng"
    path.write_bytes(b"old")
    path.chmod(0o600)
    fd = open_private_file(str(path), "-w")
    os.close(fd)
    assert path.read_bytes() == b""
