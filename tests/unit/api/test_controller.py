"""The controller's reload logic with fake modules (no root, no BPF)."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from ecapture.api.controller import Controller, ReloadError, State
from ecapture.errors import ConfigError

from .fakes import FakeModule, OtherModule, config

Scenario = Callable[[Controller], Awaitable[None]]


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


def produced(count: int) -> Callable[[], bool]:
    return lambda: FakeModule.instances[-1].produced >= count


def run(controller: Controller, scenario: Scenario) -> int:
    """Run the capture; the scenario plays the API's part, then stops it (SIGINT)."""
    async def serve(running: Controller) -> Any:
        async def play() -> None:
            try:
                await scenario(running)
            finally:
                running.signal_stop(signal.SIGINT)

        task = asyncio.ensure_future(play())

        class Api:
            async def close(self) -> None:
                await task  # a failed assertion in the scenario fails the test
        return Api()

    return asyncio.run(controller.run(serve))


def events(tmp_path: Path) -> list[dict[str, Any]]:
    lines = (tmp_path / "events.jsonl").read_bytes().splitlines()
    return [json.loads(line) for line in lines]


def paths(items: list[dict[str, Any]]) -> list[str]:
    return [event["path"] for event in items if event["type"] == "http"]


def test_a_reload_continues_one_stream_one_har_and_the_counters(tmp_path: Path) -> None:
    statuses: list[dict[str, Any]] = []

    async def scenario(controller: Controller) -> None:
        await until(produced(20))
        statuses.append(await controller.reload(FakeModule, config(tmp_path, label="b")))
        await until(produced(20))
        statuses.append(controller.status())

    assert run(Controller(FakeModule, config(tmp_path, label="a")), scenario) == 0
    first, second = FakeModule.instances
    # Every record read became an exchange in the file, once, in order: the one
    # held in flight at the stop included (flushed by the old module's close).
    written = paths(events(tmp_path))
    assert written == ([f"/a/{n}" for n in range(first.produced)]
                       + [f"/b/{n}" for n in range(second.produced)])
    har = json.loads((tmp_path / "flows.har").read_text())  # one document, written once
    assert [entry["request"]["url"].split("example.test")[1]
            for entry in har["log"]["entries"]] == written
    # The new module was built, initialised and started only after the old one closed.
    assert FakeModule.calls[:4] == ["init a#0", "start a#0", "run a#0", "close a#0"]
    assert FakeModule.calls[4:7] == ["init b#1", "start b#1", "run b#1"]
    assert first.closed >= 1 and second.closed >= 1
    # Counters go on across the reload.
    assert statuses[0]["state"] == "running" and statuses[0]["config"]["label"] == "b"
    assert statuses[1]["counters"]["exchanges"] >= first.produced + 20 - 1
    # -t cuts: each module reported its own, so the total equals the writers' count once.
    tsize = [event for event in events(tmp_path)
             if event["type"] == "lost" and event["reason"] == "tsize"]
    assert len(tsize) == 2
    assert sum(event["records"] for event in tsize) == len(written)  # one cut body each


def test_a_failed_start_restores_the_previous_configuration(tmp_path: Path) -> None:
    outcome: list[Any] = []

    async def scenario(controller: Controller) -> None:
        await until(produced(5))
        with pytest.raises(ReloadError) as raised:
            await controller.reload(FakeModule, config(tmp_path, label="bad", fail_start=True))
        outcome.append(raised.value)
        await until(produced(5))
        outcome.append(controller.status())

    run(Controller(FakeModule, config(tmp_path, label="a")), scenario)
    error, status = outcome
    assert error.status == 422 and error.restored
    assert "--libssl /missing/libssl.so: no such file" in str(error)
    assert status["state"] == "running" and status["config"]["label"] == "a"
    assert status["last_reload"]["succeeded"] is False
    # Three modules, each new: a, the failed one (closed), then a again.
    assert [m.config.label for m in FakeModule.instances] == ["a", "bad", "a"]
    assert FakeModule.instances[1].closed == 1 and not FakeModule.instances[1].started
    assert FakeModule.instances[2] is not FakeModule.instances[0]
    written = paths(events(tmp_path))
    a0, a2 = FakeModule.instances[0].produced, FakeModule.instances[2].produced
    assert written == [f"/a/{n}" for n in range(a0)] + [f"/a/{n}" for n in range(a2)]


def test_switching_module_names_the_events_by_the_new_one(tmp_path: Path) -> None:
    async def scenario(controller: Controller) -> None:
        await until(produced(3))
        status = await controller.reload(OtherModule, config(tmp_path, label="o"))
        assert status["module"] == "other"
        await until(produced(3))

    run(Controller(FakeModule, config(tmp_path)), scenario)
    http = [event for event in events(tmp_path) if event["type"] == "http"]
    modules = [event["module"] for event in http]
    assert modules == sorted(modules) and set(modules) == {"fake", "other"}


def test_a_stop_during_a_reload_answers_and_stops(tmp_path: Path) -> None:
    async def scenario(controller: Controller) -> None:
        await until(produced(2))
        reload = asyncio.ensure_future(controller.reload(FakeModule, config(tmp_path, label="b")))
        controller.signal_stop(signal.SIGTERM)
        with pytest.raises(ReloadError) as raised:
            await reload
        assert raised.value.status == 503

    run(Controller(FakeModule, config(tmp_path)), scenario)
    assert [m.config.label for m in FakeModule.instances] == ["a"]


def test_capture_fields_cannot_change_by_reload(tmp_path: Path) -> None:
    from ecapture.api.controller import keep_capture_fields

    running = config(tmp_path)
    new = config(tmp_path, eventaddr="/elsewhere.jsonl", label="b")
    kept = keep_capture_fields(running, new, given=[])
    assert kept.eventaddr == running.eventaddr and kept.label == "b"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match=r"eventaddr .* cannot change"):
        keep_capture_fields(running, new, given=["eventaddr"])


def test_the_state_after_the_capture(tmp_path: Path) -> None:
    controllers: list[Controller] = []

    async def scenario(controller: Controller) -> None:
        controllers.append(controller)
        await until(produced(1))

    run(Controller(FakeModule, config(tmp_path)), scenario)
    assert controllers[0].state is State.STOPPED
    with pytest.raises(ReloadError):
        asyncio.run(controllers[0].reload(FakeModule, config(tmp_path)))
