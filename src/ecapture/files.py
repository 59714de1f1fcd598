"""Files ecapture writes (--eventaddr, --har, --logaddr): never through a
symlink, never to a non-regular file, private (0600) from their first byte.

As root, a name in a world-writable directory such as /tmp may have been
planted by another user: a symlink to /etc/shadow, a dangling symlink (an
O_CREAT through it would create its target), a FIFO, a hard link. Nothing
here follows, creates through, chmods or truncates anything but a new file
of our own or an existing one that passes every rule below.
"""

from __future__ import annotations

import os
import stat

from ecapture.errors import ConfigError

PRIVATE_FILE_MODE = 0o600  # captured plaintext is as secret as the traffic

# What an existing file named directly must be before it is replaced (the
# tcpdump -w case). Anything else is refused, never "fixed": chmod on a
# file we did not create would act on whatever a planted name points at.
EXISTING_FILE_RULES = (
    "an existing file is replaced only when it is a regular file of ours "
    "(owner = our uid), has one name (no other hard link) and mode 0600 or narrower"
)


def _kind(mode: int) -> str:
    kinds = (
        (stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _refusal(info: os.stat_result) -> str | None:
    """Why an existing file must not be written to, or None."""
    if stat.S_ISLNK(info.st_mode):
        return "is a symbolic link: refusing to follow it (name the file itself)"
    if not stat.S_ISREG(info.st_mode):
        return f"is {_kind(info.st_mode)}, not a regular file: refusing to write to it"
    if info.st_uid != os.geteuid():
        return (f"belongs to uid {info.st_uid}, not to us (uid {os.geteuid()}): "
                "refusing to replace another user's file")
    if info.st_nlink != 1:
        return (f"has {info.st_nlink} hard links: refusing to write to a file "
                "that has other names")
    if stat.S_IMODE(info.st_mode) & 0o077:
        return (f"exists with mode {stat.S_IMODE(info.st_mode):04o}, readable or writable "
                "by others: captured data goes only to 0600 files (chmod 600 or remove it)")
    return None


def _open_existing(path: str, flag: str, *, append: bool) -> int | None:
    """Open an existing file for writing after checking it; None if it vanished.

    O_PATH|O_NOFOLLOW opens the name itself (a symlink as the link, a FIFO or
    device without opening it), so the checks run on what the name is now;
    the file is then reopened for writing through /proc/self/fd, which names
    that same inode, not the path (proc(5)): nothing swapped in meanwhile
    can be written to."""
    try:
        handle = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise ConfigError(f"{flag} {path}: cannot open: {error.strerror}") from error
    try:
        refusal = _refusal(os.fstat(handle))
        if refusal is not None:
            raise ConfigError(f"{flag} {path}: {refusal}")
        mode = os.O_WRONLY | os.O_CLOEXEC | (os.O_APPEND if append else 0)
        try:
            fd = os.open(f"/proc/self/fd/{handle}", mode)
        except OSError as error:
            raise ConfigError(f"{flag} {path}: cannot open: {error.strerror}") from error
    finally:
        os.close(handle)
    if not append:
        try:
            os.ftruncate(fd, 0)
        except OSError as error:
            os.close(fd)
            raise ConfigError(f"{flag} {path}: cannot truncate: {error.strerror}") from error
    return fd


def open_private_file(path: str, flag: str, *, append: bool = False) -> int:
    """A file descriptor to write captured data (or logs) to `path`.

    A new file is created with O_CREAT|O_EXCL|O_NOFOLLOW, mode 0600: never
    through a symlink (O_EXCL fails on any existing name, a dangling link
    included, open(2)), and private before its first byte. An existing
    name must pass EXISTING_FILE_RULES and is then truncated (or appended
    to); its mode is never changed. Refusals are ConfigError naming `flag`
    and `path`.
    """
    for _ in range(3):  # the name may come and go between the two opens
        try:
            fd = os.open(
                path,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                | (os.O_APPEND if append else 0),
                PRIVATE_FILE_MODE,
            )
        except FileExistsError:
            existing = _open_existing(path, flag, append=append)
            if existing is not None:
                return existing
            continue
        except OSError as error:
            raise ConfigError(
                f"{flag} {path}: cannot create the file: {error.strerror}"
            ) from error
        # Ours since O_EXCL: the umask may have narrowed 0600 further; make it
        # exactly 0600 before anything is written.
        try:
            os.fchmod(fd, PRIVATE_FILE_MODE)
        except OSError as error:
            os.close(fd)
            raise ConfigError(f"{flag} {path}: cannot set mode 0600: {error.strerror}") from error
        return fd
    raise ConfigError(f"{flag} {path}: the file keeps appearing and disappearing")
