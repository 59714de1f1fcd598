"""Sinks deliver formatted bytes: stdout, a file, or a TCP peer.

Each sink keeps what it is given and makes one OS write (or one
`sendall`) per `flush()`, i.e. per reader batch. A failed delivery raises
`SinkError` and the capture stops: traffic must not pass unrecorded
while the tool looks healthy (mitmproxy's save addon does the same).
After that one error the sink is dead: what the shutdown still writes is
dropped without a second error, and the module counts the records it read
but could not deliver (`undelivered` in the exit summary).
"""

from __future__ import annotations

import abc
import os
import socket
from collections.abc import Callable
from typing import NoReturn
from urllib.parse import urlsplit

from ecapture.errors import ConfigError, EcaptureError, SinkError
from ecapture.files import open_private_file
from ecapture.output.base import Sink

# Deliver early when a batch grows past this, so memory stays bounded.
HIGH_WATER_BYTES = 4 << 20
CONNECT_TIMEOUT_S = 5.0
# A peer that accepts nothing for this long stalls the capture: stop instead.
SEND_TIMEOUT_S = 30.0
IOV_MAX = os.sysconf("SC_IOV_MAX")  # buffers one writev may take


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """os.write until every byte is out (a write to a pipe may be partial).

    The views are released even on error, so a bytearray can be cleared.
    """
    with memoryview(data) as whole:
        offset = 0
        while offset < len(whole):
            with whole[offset:] as rest:
                offset += os.write(fd, rest)


def write_chunks(fd: int, chunks: list[bytes]) -> None:
    """writev until every byte is out: one system call per flush, usually,
    and no copy of the chunks (a partial write resumes where it stopped)."""
    index = 0
    while index < len(chunks):
        written = os.writev(fd, chunks[index:index + IOV_MAX])
        while index < len(chunks) and written >= len(chunks[index]):
            written -= len(chunks[index])
            index += 1
        if written:
            chunks[index] = chunks[index][written:]


class PendingBytes:
    """What a sink was given since its last flush, kept as the chunks it was
    given: a writer's batch is one or a few large bytes objects, which then
    reach the OS without being copied again (joining 5 MiB of 16 KiB events
    measured as slow as encoding them)."""

    __slots__ = ("_chunks", "size")

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self.size = 0

    def add(self, data: bytes | bytearray | memoryview) -> None:
        # A bytearray or view may change after the call returns: copy those.
        chunk = data if type(data) is bytes else bytes(data)
        self._chunks.append(chunk)
        self.size += len(chunk)

    def take(self) -> list[bytes]:
        """Everything pending, in order; clears."""
        chunks = self._chunks
        self._chunks = []
        self.size = 0
        return chunks


class _BufferedSink(abc.ABC):
    """What both sinks share: buffer until flush, one delivery per flush, and
    a failed delivery stops the capture (dropping the batch and carrying on
    would hide traffic)."""

    _verb = "writing"  # for the error message

    def __init__(self, name: str) -> None:
        self._name = name
        self._pending = PendingBytes()
        self._closed = False
        self.failed: SinkError | None = None  # the delivery error, once one happened
        self.dropped_bytes = 0  # given after the failure, never delivered

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise EcaptureError(f"write to {self._name} after it was closed")
        if self.failed is not None:
            self.dropped_bytes += len(data)
            return
        self._pending.add(data)
        if self._pending.size >= HIGH_WATER_BYTES:
            self.flush()

    def flush(self) -> None:
        chunks = self._pending.take()
        if not chunks or self.failed is not None:
            return
        try:
            self._deliver(chunks)
        except OSError as error:
            self._fail(error, sum(map(len, chunks)))

    def _fail(self, error: OSError, size: int) -> NoReturn:
        """A delivery of `size` bytes failed: the sink is dead from now on."""
        reason = "timed out" if isinstance(error, TimeoutError) else error.strerror or error
        self.failed = SinkError(
            f"{self._verb} events to {self._name} failed: {reason}; "
            "stopping so that no traffic passes unrecorded"
        )
        self.dropped_bytes += size
        raise self.failed from error

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            self._release()

    @abc.abstractmethod
    def _deliver(self, chunks: list[bytes]) -> None:
        """Hand every chunk to the OS, in order; raise OSError on failure."""

    @abc.abstractmethod
    def _release(self) -> None:
        """Free what the sink holds (after the last delivery)."""


class FdSink(_BufferedSink):
    """Buffered writes to a file descriptor (stdout or a file we opened)."""

    def __init__(self, fd: int, name: str, *, owns_fd: bool) -> None:
        super().__init__(name)
        self._fd = fd
        self._owns_fd = owns_fd

    def _deliver(self, chunks: list[bytes]) -> None:
        write_chunks(self._fd, chunks)

    def write_direct(self, write: Callable[[int], object], size: int) -> None:
        """Have `write(fd)` put `size` bytes of its own buffer out, after what
        is pending (the native core writes its lines itself: no bytes object
        per poll); its OSError is a failed delivery, as flush's are."""
        if self._closed:
            raise EcaptureError(f"write to {self._name} after it was closed")
        if self.failed is not None:
            self.dropped_bytes += size
            return
        self.flush()
        try:
            write(self._fd)
        except OSError as error:
            self._fail(error, size)

    def _release(self) -> None:
        if self._owns_fd:
            os.close(self._fd)


class TcpSink(_BufferedSink):
    """Events sent to a TCP peer (e.g. `nc -l`, a log collector).

    Connects once at open; no reconnect: a lost peer stops the capture
    with the reason rather than silently dropping what it would have got.
    """

    _verb = "sending"

    def __init__(self, host: str, port: int) -> None:
        super().__init__(f"tcp://{host}:{port}")
        try:
            self._socket = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S)
        except OSError as error:
            raise EcaptureError(
                f"--eventaddr {self._name}: cannot connect: {error.strerror or error}"
            ) from error
        self._socket.settimeout(SEND_TIMEOUT_S)

    def _deliver(self, chunks: list[bytes]) -> None:
        for chunk in chunks:  # usually one: a writer hands over one per batch
            self._socket.sendall(chunk)

    def _release(self) -> None:
        self._socket.close()


def _tcp_sink(address: str, flag: str) -> TcpSink:
    parts = urlsplit(address)
    try:
        port = parts.port
    except ValueError as error:
        raise ConfigError(f"{flag} {address}: invalid port") from error
    if not parts.hostname or port is None:
        raise ConfigError(f"{flag} {address}: expected tcp://HOST:PORT")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"{flag} {address}: expected tcp://HOST:PORT, nothing after the port")
    return TcpSink(parts.hostname, port)


def open_sink(address: str | None, *, flag: str = "--eventaddr") -> Sink:
    """None or "-" = stdout; PATH or file://PATH = a new 0600 file;
    tcp://HOST:PORT = a TCP connection made now."""
    if address is None or address == "-":
        return FdSink(1, "stdout", owns_fd=False)
    if "://" not in address:
        return FdSink(open_private_file(address, flag), address, owns_fd=True)
    scheme = address.split("://", 1)[0].lower()
    if scheme == "file":
        path = address[len("file://"):]
        if not path:
            raise ConfigError(f"{flag} {address}: expected file://PATH")
        return FdSink(open_private_file(path, flag), path, owns_fd=True)
    if scheme == "tcp":
        return _tcp_sink(address, flag)
    raise ConfigError(
        f"{flag} {address}: unknown scheme {scheme!r}; use a file path, file://PATH, "
        "tcp://HOST:PORT or - for stdout"
    )
