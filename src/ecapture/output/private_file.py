"""Files that hold secrets or captured traffic: mode 0600, never through a symlink.

O_NOFOLLOW refuses a symlink as the last component (open(2)); O_EXCL first
tells a file we create, whose mode we then set with fchmod (the umask can
only clear bits), from one that existed, whose owner chose its mode. Only a
regular file is accepted: a FIFO or device named by mistake is refused.
"""

from __future__ import annotations

import os
import stat

from ecapture.errors import ConfigError

PRIVATE_FILE_MODE = 0o600


def open_private_file(path: str, *, append: bool, flag: str) -> int:
    """An fd open for writing `path`; appended to, or truncated when `append` is False."""
    common = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_APPEND if append else 0)
    created = True
    try:
        try:
            fd = os.open(path, common | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
        except FileExistsError:
            created = False
            fd = os.open(path, common | (0 if append else os.O_TRUNC))
    except OSError as error:
        reason = error.strerror
        if os.path.islink(path):
            reason = "it is a symbolic link (refused: the file would be written elsewhere)"
        raise ConfigError(f"{flag} {path}: cannot open: {reason}") from error
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise ConfigError(f"{flag} {path}: not a regular file")
        if created:
            os.fchmod(fd, PRIVATE_FILE_MODE)
    except OSError as error:
        os.close(fd)
        raise ConfigError(f"{flag} {path}: {error.strerror}") from error
    except ConfigError:
        os.close(fd)
        raise
    return fd
