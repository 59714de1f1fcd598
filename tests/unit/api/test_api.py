"""The HTTP API over a real socket with a real client (requests, aiohttp), fake modules."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
from openapi_spec_validator import validate

from ecapture.api.listen import check_listen, parse_listen
from ecapture.api.output import EventFilter, Subscriber
from ecapture.cli import main
from ecapture.errors import ConfigError

from .fakes import FakeModule
from .server import RunningApi, api_server

TIMEOUT = 10


@pytest.fixture
def api(tmp_path: Path) -> Iterator[RunningApi]:
    with api_server(tmp_path) as running:
        yield running


def wait_produced(count: int) -> FakeModule:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        module = FakeModule.instances[-1]
        if module.produced >= count:
            return module
        time.sleep(0.01)
    raise AssertionError("the fake module produced nothing")


def test_status_says_module_state_config_and_counters(api: RunningApi) -> None:
    wait_produced(5)
    status = requests.get(f"{api.url}/status", timeout=TIMEOUT).json()
    assert status["module"] == "fake" and status["state"] == "running"
    assert status["config"]["label"] == "a"
    assert status["counters"]["exchanges"] >= 4
    assert status["uptime_s"] > 0


def test_the_served_openapi_document_is_valid(api: RunningApi) -> None:
    document = requests.get(f"{api.url}/openapi.json", timeout=TIMEOUT).json()
    validate(document)
    assert {"/status", "/config", "/events", "/", "/fake", "/other"} <= set(document["paths"])
    fake_body = document["paths"]["/fake"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]
    assert fake_body["properties"]["pid"]["type"] == "integer"
    assert fake_body["properties"]["fail-start"]["type"] == "boolean"


@pytest.mark.parametrize(("body", "message"), [
    (b"{not json", "malformed JSON"),
    (b"[1, 2]", "expected a JSON object"),
    (b'{"module": "fake", "pid": "x"}', "argument -p/--pid: invalid int value: 'x'"),
    (b'{"module": "fake", "nosuch": 1}', "unrecognized arguments: --nosuch=1"),
    (b'{"module": "nosuch"}', "unknown capture module 'nosuch'"),
    (b'{"module": "fake", "listen": "0.0.0.0:1"}', "listen cannot be set by a reload"),
    (b'{"module": "fake", "eventaddr": "/tmp/other"}', "eventaddr"),
    (b'{"module": "fake", "switch": 1}', "switch: expected true or false"),
])
def test_a_malformed_or_invalid_config_is_400_and_the_capture_goes_on(
    api: RunningApi, body: bytes, message: str,
) -> None:
    module = wait_produced(3)
    response = requests.post(f"{api.url}/config", data=body, timeout=TIMEOUT)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]
    before = module.produced
    wait_produced(before + 3)
    assert FakeModule.instances == [module] and not module.stopping


def test_a_reload_answers_with_the_new_status(api: RunningApi) -> None:
    wait_produced(3)
    response = requests.post(f"{api.url}/fake", json={"label": "b", "pid": 7}, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    status = response.json()
    assert status["config"]["label"] == "b" and status["config"]["pid"] == 7
    assert status["state"] == "running" and status["reloads"] == 1
    assert FakeModule.instances[0].closed == 1 and FakeModule.instances[1].started


def test_another_module_needs_switch(api: RunningApi) -> None:
    wait_produced(1)
    refused = requests.post(f"{api.url}/config", json={"module": "other"}, timeout=TIMEOUT)
    assert refused.status_code == 409 and "switch" in refused.json()["error"]
    assert len(FakeModule.instances) == 1
    done = requests.post(f"{api.url}/other", json={"switch": True}, timeout=TIMEOUT)
    assert done.status_code == 200 and done.json()["module"] == "other"


def test_a_failed_start_is_422_and_the_previous_runs_again(api: RunningApi) -> None:
    wait_produced(1)
    response = requests.post(f"{api.url}/config", json={"module": "fake", "label": "bad",
                                                        "fail-start": True}, timeout=TIMEOUT)
    assert response.status_code == 422
    answer = response.json()
    assert "no such file; the previous configuration runs again" in answer["error"]
    assert answer["restored"] and answer["status"]["config"]["label"] == "a"
    assert [m.config.label for m in FakeModule.instances] == ["a", "bad", "a"]
    wait_produced(3)


def test_every_request_needs_the_token(tmp_path: Path) -> None:
    with api_server(tmp_path, token="s3cret") as api:
        for path in ("/status", "/openapi.json", "/", "/static/app.js"):
            response = requests.get(f"{api.url}{path}", timeout=TIMEOUT)
            assert response.status_code == 401, path
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
        wrong = requests.get(f"{api.url}/status", timeout=TIMEOUT,
                             headers={"Authorization": "Bearer wrong"})
        assert wrong.status_code == 401
        posted = requests.post(f"{api.url}/config", json={"module": "fake"}, timeout=TIMEOUT)
        assert posted.status_code == 401 and len(FakeModule.instances) == 1
        right = requests.get(f"{api.url}/status", timeout=TIMEOUT,
                             headers={"Authorization": "Bearer s3cret"})
        assert right.status_code == 200


def test_the_page_and_its_modules_are_served(api: RunningApi) -> None:
    page = requests.get(api.url + "/", timeout=TIMEOUT)
    assert page.status_code == 200 and 'type="module"' in page.text
    for name in ("app.js", "format.js", "style.css"):
        assert requests.get(f"{api.url}/static/{name}", timeout=TIMEOUT).status_code == 200
    assert requests.get(f"{api.url}/static/../server.py", timeout=TIMEOUT).status_code == 404


async def _read_events(url: str, count: int) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as socket:
        received: list[dict[str, Any]] = []
        async with asyncio.timeout(TIMEOUT):
            while len(received) < count:
                message = await socket.receive()
                assert message.type is aiohttp.WSMsgType.TEXT, message
                received.append(json.loads(message.data))
        return received


def test_the_event_stream_is_the_json_events_filtered(api: RunningApi) -> None:
    wait_produced(1)
    ws = api.url.replace("http", "ws")
    http = asyncio.run(_read_events(f"{ws}/events?type=http&module=fake&pid=4242", 5))
    assert {event["type"] for event in http} == {"http"}
    assert all(event["pid"] == 4242 and event["module"] == "fake" for event in http)
    numbers = [int(event["path"].rsplit("/", 1)[1]) for event in http]
    assert numbers == list(range(numbers[0], numbers[0] + 5))  # in order, none skipped
    # The same objects as the file's.
    written = {event["path"]: event for event in
               (json.loads(line) for line in api.events_path.read_bytes().splitlines())
               if event["type"] == "http"}
    time.sleep(0.1)
    assert http[0] == written.get(http[0]["path"], http[0])
    assert asyncio.run(_read_events(f"{ws}/events?pid=1", 0)) == []


def test_a_websocket_request_that_is_not_one_is_400(api: RunningApi) -> None:
    assert requests.get(f"{api.url}/events", timeout=TIMEOUT).status_code == 400
    assert requests.get(f"{api.url}/events?pid=x", timeout=TIMEOUT).status_code == 400


def test_a_slow_client_misses_events_and_is_told() -> None:
    woken: list[int] = []
    subscriber = Subscriber(EventFilter(types=frozenset({"http"})), lambda: woken.append(1),
                            limit=3)
    for number in range(5):
        assert subscriber.offer(b"x" * 10, {"type": "http", "n": number}) is (number < 3)
    assert subscriber.offer(b"ignored", {"type": "data"})  # filtered out, not missed
    lines = subscriber.take("tls", 123)
    lost = json.loads(lines[0])
    assert lost["type"] == "lost" and lost["reason"] == "queue_full"
    assert (lost["records"], lost["bytes"]) == (2, 20)
    assert lines[1:] == [b"x" * 10] * 3
    assert subscriber.take("tls", 124) == []  # told once


def test_listen_values() -> None:
    assert parse_listen("8080") == ("127.0.0.1", 8080)
    assert parse_listen(":8080") == ("127.0.0.1", 8080)
    assert parse_listen("[::1]:9") == ("::1", 9)
    assert check_listen("0.0.0.0:1", "t") == ("0.0.0.0", 1)
    with pytest.raises(ConfigError, match="needs --api-token"):
        check_listen("0.0.0.0:8080", None)
    with pytest.raises(ConfigError, match="port must be"):
        parse_listen("127.0.0.1:70000")


def test_listening_beyond_loopback_without_a_token_is_refused_at_start(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ECAPTURE_API_TOKEN", raising=False)
    assert main(["tls", "--listen", "0.0.0.0:8080"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ecapture: error: --listen 0.0.0.0:8080")


def test_a_gone_client_is_forgotten_and_the_capture_goes_on(api: RunningApi) -> None:
    async def connect_and_leave() -> None:
        async with aiohttp.ClientSession() as session:
            socket = await session.ws_connect(api.url.replace("http", "ws") + "/events")
            await asyncio.sleep(0.2)  # events are queued for it meanwhile
            await socket.close()

    wait_produced(1)
    asyncio.run(connect_and_leave())
    deadline = time.monotonic() + TIMEOUT
    while api.controller.status()["event_clients"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert api.controller.status()["event_clients"] == 0
    module = FakeModule.instances[-1]
    wait_produced(module.produced + 20)
