"""Logging set-up: stderr by default, or --logaddr (a file or tcp://host:port).

Logs never share stdout with the event stream.
"""

from __future__ import annotations

import logging
import socket
import sys
from urllib.parse import urlsplit

from ecapture.errors import ConfigError
from ecapture.files import open_private_file

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class _TcpLogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Log lines over one TCP connection (stdlib SocketHandler sends pickles)."""

    def __init__(self, host: str, port: int) -> None:
        try:
            self.connection = socket.create_connection((host, port), timeout=5)
        except OSError as error:
            raise ConfigError(f"--logaddr tcp://{host}:{port}: {error.strerror}") from None
        super().__init__(self.connection.makefile("w", encoding="utf-8", buffering=1))

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.connection.close()


class _FileLogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Log lines to a file we opened (FileHandler would reopen it by name)."""

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.stream.close()


def _handler(logaddr: str | None) -> logging.Handler:
    if not logaddr or logaddr == "-":
        return logging.StreamHandler(sys.stderr)
    parts = urlsplit(logaddr)
    if parts.scheme == "tcp":
        if not parts.hostname or not parts.port:
            raise ConfigError(f"--logaddr {logaddr}: expected tcp://host:port")
        return _TcpLogHandler(parts.hostname, parts.port)
    if parts.scheme in {"", "file"}:
        path = parts.path if parts.scheme else logaddr
        # Appended to, as logging.FileHandler does, but opened by the same
        # rules as every file we write (no symlink, 0600, files.py).
        fd = open_private_file(path, "--logaddr", append=True)
        return _FileLogHandler(open(fd, "a", encoding="utf-8", buffering=1))
    raise ConfigError(f"--logaddr {logaddr}: unknown scheme {parts.scheme!r} (file or tcp://)")


def setup_logging(*, debug: bool, logaddr: str | None) -> None:
    handler = _handler(logaddr)
    handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
