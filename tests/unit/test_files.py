"""Files ecapture writes: never through a symlink, never to a non-regular file,
0600 from the first byte, and never a chmod of a file it did not create."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from ecapture import files
from ecapture.errors import ConfigError
from ecapture.files import open_private_file


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def write(fd: int, data: bytes) -> None:
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


@pytest.fixture
def victim(tmp_path: Path) -> Iterator[Path]:
    """A stand-in for /etc/shadow: a file nobody may change through our names."""
    path = tmp_path / "shadow"
    path.write_bytes(b"root:$y$secret:19000::::::\n")
    path.chmod(0o640)
    before = path.stat()
    yield path
    after = path.stat()
    assert path.read_bytes() == b"root:$y$secret:19000::::::\n"
    assert (after.st_mode, after.st_size, after.st_mtime_ns, after.st_ino) == (
        before.st_mode, before.st_size, before.st_mtime_ns, before.st_ino
    )


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o277])
def test_a_new_file_is_exactly_0600(tmp_path: Path, umask: int) -> None:
    path = tmp_path / "events.jsonl"
    old = os.umask(umask)
    try:
        write(open_private_file(str(path), "--eventaddr"), b"x")
    finally:
        os.umask(old)
    assert mode(path) == 0o600
    assert path.read_bytes() == b"x"


def test_an_existing_private_file_is_truncated_or_appended_to(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"old run\n")
    path.chmod(0o600)
    write(open_private_file(str(path), "--logaddr", append=True), b"appended\n")
    assert path.read_bytes() == b"old run\nappended\n"
    write(open_private_file(str(path), "--eventaddr"), b"new\n")
    assert path.read_bytes() == b"new\n"
    assert mode(path) == 0o600


def test_a_narrower_existing_mode_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"")
    path.chmod(0o200)
    write(open_private_file(str(path), "--eventaddr"), b"x")
    assert mode(path) == 0o200  # never chmod-ed, not even to 0600


def test_a_symlink_to_a_file_is_refused(tmp_path: Path, victim: Path) -> None:
    link = tmp_path / "events.jsonl"
    link.symlink_to(victim)
    with pytest.raises(ConfigError) as raised:
        open_private_file(str(link), "--eventaddr")
    assert str(raised.value) == (
        f"--eventaddr {link}: is a symbolic link: refusing to follow it (name the file itself)"
    )


def test_a_dangling_symlink_creates_nothing(tmp_path: Path) -> None:
    target = tmp_path / "etc" / "cron.d-job"
    target.parent.mkdir()
    link = tmp_path / "events.jsonl"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match="is a symbolic link"):
        open_private_file(str(link), "--har")
    assert not target.exists()
    assert link.is_symlink()


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "events.jsonl"
    os.mkfifo(fifo, 0o600)
    # A plain open(O_WRONLY) of a FIFO blocks until a reader comes: this must not.
    with pytest.raises(ConfigError, match="is a FIFO, not a regular file"):
        open_private_file(str(fifo), "--eventaddr")


@pytest.mark.parametrize(
    ("path", "kind"), [("/dev/null", "a character device"), ("/", "a directory")]
)
def test_other_non_regular_files_are_refused(path: str, kind: str) -> None:
    with pytest.raises(ConfigError, match=f"--logaddr {path}: is {kind}, not a regular file"):
        open_private_file(path, "--logaddr")


def test_a_hard_link_is_refused(tmp_path: Path) -> None:
    original = tmp_path / "precious"
    original.write_bytes(b"keep me")
    original.chmod(0o600)
    alias = tmp_path / "events.jsonl"
    os.link(original, alias)
    with pytest.raises(ConfigError, match="has 2 hard links"):
        open_private_file(str(alias), "--eventaddr")
    assert original.read_bytes() == b"keep me"


@pytest.mark.parametrize("existing_mode", [0o644, 0o640, 0o604, 0o620])
def test_an_existing_file_others_may_access_is_left_as_it_is(
    tmp_path: Path, existing_mode: int
) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"old")
    path.chmod(existing_mode)
    with pytest.raises(ConfigError, match=f"exists with mode {existing_mode:04o}"):
        open_private_file(str(path), "--eventaddr")
    assert mode(path) == existing_mode
    assert path.read_bytes() == b"old"


def test_another_users_file_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file to another user")
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"theirs")
    path.chmod(0o600)
    os.chown(path, 65534, 65534)
    with pytest.raises(ConfigError, match="belongs to uid 65534"):
        open_private_file(str(path), "--eventaddr")
    assert path.read_bytes() == b"theirs"


def test_a_name_swapped_for_a_symlink_after_the_check_is_not_followed(
    tmp_path: Path, victim: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file is checked, then the attacker renames a symlink over it: the
    write still goes to the inode that was checked, through /proc/self/fd."""
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"ours")
    path.chmod(0o600)
    real_fstat = os.fstat

    def fstat_then_swap(fd: int) -> os.stat_result:
        result = real_fstat(fd)
        planted = tmp_path / "planted"
        planted.symlink_to(victim)
        planted.replace(path)
        return result

    monkeypatch.setattr(files.os, "fstat", fstat_then_swap)
    write(open_private_file(str(path), "--eventaddr"), b"captured")
    assert path.is_symlink()  # the planted link, untouched; victim checked by the fixture


def test_a_missing_directory_names_the_flag(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^--har .*/no/such/dir/x.har: cannot create the file"):
        open_private_file(str(tmp_path / "no" / "such" / "dir" / "x.har"), "--har")
