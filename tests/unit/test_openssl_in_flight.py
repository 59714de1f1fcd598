"""`ecapture tls` turns each SSL call found in flight at attach into a `lost` item
(the scan itself is tested in tests/unit/elf/test_inflight.py)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

from ecapture.elf.inflight import InFlightCall, InFlightScanner
from ecapture.events import LossReason, Lost
from ecapture.modules import openssl
from ecapture.modules.openssl import OpensslModule, TlsConfig
from ecapture.output.base import CutCount, OutputItem
from ecapture.pipeline import Pipeline

LIBSSL = Path("/usr/lib/x86_64-linux-gnu/libssl.so.3")
CALLS = [
    InFlightCall(100, 101, "server", 1000, 4, "read", "SSL_read_ex", LIBSSL),
    InFlightCall(200, 200, "other", 0, 7, "write", "SSL_write_ex", LIBSSL),
]


class RecordingWriter:
    def __init__(self) -> None:
        self.cut = CutCount()
        self.items: list[OutputItem] = []
        self.flushes = 0

    def write(self, item: OutputItem) -> None:
        self.items.append(item)

    def flush(self) -> None:
        self.flushes += 1

    def close(self) -> None:
        pass

    def lost(self) -> list[Lost]:
        return [item for item in self.items if isinstance(item, Lost)]


def report(monkeypatch: pytest.MonkeyPatch, config: TlsConfig) -> tuple[RecordingWriter,
                                                                          list[object]]:
    asked: list[object] = []

    def fake_scan(paths: Iterable[Path], *, pids: Iterable[int] | None = None
                  ) -> tuple[list[InFlightCall], InFlightScanner]:
        asked.append(pids)
        wanted = None if pids is None else set(pids)
        calls = [call for call in CALLS if wanted is None or call.pid in wanted]
        return calls, InFlightScanner([])

    monkeypatch.setattr(openssl, "in_flight_calls", fake_scan)
    module = OpensslModule(config)
    writer = RecordingWriter()
    module._pipeline = Pipeline([writer])
    module._report_calls_in_flight()
    return writer, asked


def test_each_call_in_flight_is_one_lost_item_and_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    writer, asked = report(monkeypatch, TlsConfig())
    assert asked == [None]
    assert [(lost.reason, lost.records, lost.bytes, lost.pid, lost.comm, lost.fd, lost.conn_id)
            for lost in writer.lost()] == [
        (LossReason.IN_FLIGHT, 1, 0, 100, "server", 4, None),
        (LossReason.IN_FLIGHT, 1, 0, 200, "other", 7, None),
    ]
    assert all(isinstance(item, Lost) for item in writer.items)
    assert writer.flushes >= 2


def test_the_pid_and_uid_filters_apply_as_in_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    writer, asked = report(monkeypatch, TlsConfig(pid=100))
    assert asked == [(100,)]
    assert [lost.pid for lost in writer.lost()] == [100]
    writer, _ = report(monkeypatch, TlsConfig(uid=0))
    assert [lost.pid for lost in writer.lost()] == [200]


def test_a_failing_scan_is_logged_and_the_capture_goes_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_scan(paths: Iterable[Path], *, pids: Iterable[int] | None = None
                    ) -> tuple[list[InFlightCall], InFlightScanner]:
        raise ValueError("a maps line nobody expected")

    monkeypatch.setattr(openssl, "in_flight_calls", broken_scan)
    module = OpensslModule(TlsConfig())
    writer = RecordingWriter()
    module._pipeline = Pipeline([writer])
    module._report_calls_in_flight()
    assert writer.items == []
    assert "the in-flight scan failed" in caplog.text
    assert "a maps line nobody expected" in caplog.text
