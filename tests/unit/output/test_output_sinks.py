from __future__ import annotations

import os
import socket
import stat
import struct
import threading
from pathlib import Path

import pytest

from ecapture.errors import ConfigError, EcaptureError, SinkError
from ecapture.output import sinks
from ecapture.output.sinks import open_sink


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("prefix", ["", "file://"])
def test_file_sink_is_0600_and_written_once_per_flush(tmp_path: Path, prefix: str) -> None:
    path = tmp_path / "events.jsonl"
    sink = open_sink(prefix + str(path))
    assert mode(path) == 0o600
    sink.write(b"one\n")
    sink.write(b"two\n")
    assert path.read_bytes() == b""  # buffered until the batch ends
    sink.flush()
    assert path.read_bytes() == b"one\ntwo\n"
    sink.write(b"three\n")
    sink.close()
    sink.close()
    assert path.read_bytes() == b"one\ntwo\nthree\n"


def test_file_sink_replaces_an_existing_private_file(tmp_path: Path) -> None:
    path = tmp_path / "old.jsonl"
    path.write_bytes(b"stale contents")
    path.chmod(0o600)
    sink = open_sink(str(path))
    sink.write(b"new\n")
    sink.close()
    assert mode(path) == 0o600
    assert path.read_bytes() == b"new\n"


def test_file_sink_leaves_a_readable_existing_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "old.jsonl"
    path.write_bytes(b"stale contents")
    path.chmod(0o644)
    with pytest.raises(ConfigError, match=r"--eventaddr .*old.jsonl: exists with mode 0644"):
        open_sink(str(path))
    assert mode(path) == 0o644  # neither narrowed nor truncated
    assert path.read_bytes() == b"stale contents"


def test_file_sink_refuses_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "shadow"
    target.write_bytes(b"root:x:0:0\n")
    target.chmod(0o640)
    link = tmp_path / "events.jsonl"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match="is a symbolic link"):
        open_sink(f"file://{link}")
    assert mode(target) == 0o640
    assert target.read_bytes() == b"root:x:0:0\n"


def test_file_sink_error_names_the_flag(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--eventaddr"):
        open_sink(str(tmp_path / "missing-dir" / "x.jsonl"))


def test_write_error_stops_loudly_once(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    sink = sinks.FdSink(write_end, "a closed pipe", owns_fd=True)
    sink.write(b"data")
    with pytest.raises(SinkError, match="no traffic passes unrecorded") as raised:
        sink.flush()
    assert sink.failed is raised.value
    # The shutdown that follows writes what it still holds: dropped, counted,
    # and no second error to bury the first.
    sink.write(b"more")
    sink.flush()
    sink.close()
    assert sink.dropped_bytes == len(b"data") + len(b"more")


def test_disk_full_is_a_sink_error() -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full (ENOSPC on every write) on this system")
    fd = os.open("/dev/full", os.O_WRONLY | os.O_CLOEXEC)
    sink = sinks.FdSink(fd, "/dev/full", owns_fd=True)
    sink.write(b"x" * 100)
    with pytest.raises(SinkError, match="writing events to /dev/full failed: No space left"):
        sink.flush()
    sink.close()


@pytest.mark.parametrize("address", ["ws://127.0.0.1:1", "udp://127.0.0.1:9", "kafka://x"])
def test_unknown_scheme_is_refused(address: str) -> None:
    with pytest.raises(ConfigError, match=r"--eventaddr .*unknown scheme"):
        open_sink(address)


@pytest.mark.parametrize("address", ["tcp://127.0.0.1", "tcp://:80", "tcp://h:99999",
                                     "tcp://127.0.0.1:80/path"])
def test_bad_tcp_address_is_refused(address: str) -> None:
    with pytest.raises(ConfigError, match="--eventaddr"):
        open_sink(address)


def test_stdout_sink_does_not_close_stdout() -> None:
    sink = open_sink("-")
    assert isinstance(sink, sinks.FdSink)
    sink.close()
    os.fstat(1)  # still open


def test_tcp_sink_delivers_to_a_listener() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(5)
        port = server.getsockname()[1]
        received = bytearray()

        def accept() -> None:
            connection, _ = server.accept()
            with connection:
                connection.settimeout(5)
                while chunk := connection.recv(65536):
                    received.extend(chunk)

        thread = threading.Thread(target=accept)
        thread.start()
        sink = open_sink(f"tcp://127.0.0.1:{port}")
        sink.write(b'{"type":"data"}\n')
        sink.write(b"x" * 100_000 + b"\n")
        sink.flush()
        sink.close()
        thread.join(timeout=5)
        assert not thread.is_alive()
    assert received == b'{"type":"data"}\n' + b"x" * 100_000 + b"\n"


def test_tcp_sink_cannot_connect() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
    # The port was just released: nothing listens there now.
    with pytest.raises(EcaptureError, match="cannot connect"):
        open_sink(f"tcp://127.0.0.1:{port}")


def test_tcp_peer_gone_stops_loudly() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        sink = open_sink(f"tcp://127.0.0.1:{port}")
        connection, _ = server.accept()
        # Close with RST (SO_LINGER 0) so the next send fails at once.
        linger_off = struct.pack("ii", 1, 0)
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger_off)
        connection.close()
    with pytest.raises(SinkError, match="sending events to tcp://"):
        for _ in range(100):  # the first send may still be accepted by the kernel
            sink.write(b"y" * 65536)
            sink.flush()
    sink.close()


def test_partial_writes_resume_where_they_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_writev = os.writev

    def short_writev(fd: int, buffers: list[bytes]) -> int:
        return real_writev(fd, [bytes(buffers[0][:3])])  # at most 3 bytes a call

    monkeypatch.setattr(sinks.os, "writev", short_writev)
    path = tmp_path / "short.log"
    sink = open_sink(str(path))
    source = bytearray(b"abcdefgh")
    sink.write(source)
    source[:] = b"XXXXXXXX"  # the sink copied a mutable buffer when it was given
    sink.write(b"")
    sink.write(b"ijklmnopq")
    sink.close()
    assert path.read_bytes() == b"abcdefghijklmnopq"


def test_a_direct_write_follows_what_is_pending(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    sink = open_sink(str(path))
    assert isinstance(sink, sinks.FdSink)
    sink.write(b"pending\n")
    sink.write_direct(lambda fd: os.write(fd, b"direct\n"), 7)
    sink.close()
    assert path.read_bytes() == b"pending\ndirect\n"


def test_a_failed_direct_write_stops_loudly_once() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    sink = sinks.FdSink(write_end, "a closed pipe", owns_fd=True)
    with pytest.raises(SinkError, match="no traffic passes unrecorded"):
        sink.write_direct(lambda fd: os.write(fd, b"direct"), 6)
    sink.write_direct(lambda fd: os.write(fd, b"never"), 5)  # dead: counted, not written
    sink.close()
    assert sink.dropped_bytes == 11
    with pytest.raises(EcaptureError, match="after it was closed"):
        sink.write_direct(lambda fd: 0, 1)
