"""Controller.run_alone: a capture without the API, on threads, no event loop (no root)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ecapture.api.controller import Controller, State
from ecapture.errors import LibraryNotFound, SinkError

from .fakes import FakeModule, config


def when(predicate: Callable[[], bool], then: Callable[[], None]) -> threading.Thread:
    """Call `then` from another thread once `predicate` holds (at most 5 s)."""
    def wait() -> None:
        deadline = time.monotonic() + 5
        while not predicate() and time.monotonic() < deadline:
            time.sleep(0.002)
        then()

    thread = threading.Thread(target=wait)
    thread.start()
    return thread


def produced(count: int) -> Callable[[], bool]:
    return lambda: bool(FakeModule.instances) and FakeModule.instances[-1].produced >= count


def paths(tmp_path: Path) -> list[str]:
    lines = (tmp_path / "events.jsonl").read_bytes().splitlines()
    return [event["path"] for event in map(json.loads, lines) if event["type"] == "http"]


def test_a_signal_stops_drains_and_closes(tmp_path: Path) -> None:
    """A real SIGINT (this is the main thread): the handler stops the module,
    everything read is written, the previous handler is back afterwards."""
    before = signal.getsignal(signal.SIGINT)
    controller = Controller(FakeModule, config(tmp_path))
    sender = when(produced(20), lambda: os.kill(os.getpid(), signal.SIGINT))
    assert controller.run_alone() == 0
    sender.join()
    module, = FakeModule.instances
    assert FakeModule.calls == ["init a#0", "start a#0", "run a#0", "close a#0"]
    assert module.closed == 1 and controller.state is State.STOPPED
    assert paths(tmp_path) == [f"/a/{n}" for n in range(module.produced)]  # the held one too
    har = json.loads((tmp_path / "flows.har").read_text())
    assert len(har["log"]["entries"]) == module.produced
    assert controller.counters().http_exchanges == module.produced
    assert signal.getsignal(signal.SIGINT) is before


def test_a_second_signal_is_said_and_reaches_the_module(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    controller = Controller(FakeModule, config(tmp_path), signals=False)

    def twice() -> None:
        controller.signal_stop(signal.SIGTERM)
        controller.signal_stop(signal.SIGTERM)

    sender = when(produced(3), twice)
    with caplog.at_level("INFO", logger="ecapture.api.controller"):
        assert controller.run_alone() == 0
    sender.join()
    messages = [record.getMessage() for record in caplog.records]
    assert "stopping (SIGTERM); a second signal stops without waiting for the ring" in messages
    assert any(message.startswith("SIGTERM again: stopping now") for message in messages)


def test_a_failed_start_raises_with_everything_closed(tmp_path: Path) -> None:
    controller = Controller(FakeModule, config(tmp_path, fail_start=True), signals=False)
    with pytest.raises(LibraryNotFound, match="no such file"):
        controller.run_alone()
    module, = FakeModule.instances
    assert module.closed == 1 and not module.started
    assert FakeModule.calls == ["init a#0", "start a#0", "close a#0"]
    assert controller.state is State.STOPPED and controller.module is None
    assert (tmp_path / "flows.har").exists()  # the output was closed (HAR written)


class FailingRun(FakeModule):
    """run() ends by itself, as when the events sink fails: no signal comes."""

    def run(self) -> None:
        self._log("run")
        assert self._pipeline is not None
        for number in range(5):
            self._pipeline.handle_batch([number])  # type: ignore[list-item]
            self.produced += 1
        raise SinkError("events sink: the collector went away (test)")


def test_a_failed_run_ends_the_capture_with_its_error(tmp_path: Path) -> None:
    controller = Controller(FailingRun, config(tmp_path), signals=False)
    with pytest.raises(SinkError, match="went away"):
        controller.run_alone()
    module, = FakeModule.instances
    assert module.closed == 1 and FakeModule.calls == ["init a#0", "start a#0", "run a#0",
                                                       "close a#0"]
    assert paths(tmp_path) == [f"/a/{n}" for n in range(5)]
