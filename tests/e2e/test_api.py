"""The HTTP API driving a real capture (root, BPF): curl and Python clients against nginx.

A real HTTP client (requests) asks for the status, sends malformed, invalid
and failing configurations while the capture goes on, and narrows `-p` to one
of two running clients: every request of the kept client is in the one
output file (before and after the reload), the other's stop at the reload.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from .capture import Ecapture, capture
from .targets import Server, free_port

pytestmark = pytest.mark.e2e

PROGRAMS = Path(__file__).parent / "programs"
TOKEN = "e2e-token-5f1c"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TIMEOUT = 60  # a reload detaches and attaches every probe; slower on a loaded machine


class PacedClient:
    """tests/e2e/programs/paced_client.py: one request per `fetch(n)`."""

    def __init__(self, name: str, server: Server) -> None:
        self.name = name
        self.process = subprocess.Popen(
            [sys.executable, str(PROGRAMS / "paced_client.py"), name, server.url("/echo")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.fetched: list[int] = []

    @property
    def pid(self) -> int:
        return self.process.pid

    def fetch(self, number: int) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{number}\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline().split()
        assert line[:3] == ["ok", str(number), "200"], line
        self.fetched.append(number)

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def wait_listening(url: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            requests.get(f"{url}/status", headers=AUTH, timeout=2)
            return
        except requests.ConnectionError:
            time.sleep(0.1)
    raise AssertionError(f"the API at {url} did not answer")


@pytest.fixture
def clients(nginx: Server) -> Iterator[tuple[PacedClient, PacedClient]]:
    kept, other = PacedClient("kept", nginx), PacedClient("other", nginx)
    try:
        yield kept, other
    finally:
        kept.close()
        other.close()


def http_paths(events: list[dict[str, Any]], pid: int) -> list[str]:
    return [event["path"] for event in events if event["type"] == "http" and event["pid"] == pid]


def test_status_reload_errors_and_a_narrowing_reload(
    ecapture: Ecapture, nginx: Server, tmp_path: Path,
    clients: tuple[PacedClient, PacedClient],
) -> None:
    kept, other = clients
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    har = tmp_path / "flows.har"
    rounds = iter(range(100))

    def both(times: int) -> None:
        for _ in range(times):
            number = next(rounds)
            kept.fetch(number)
            other.fetch(number)

    with capture(ecapture, tmp_path, "--listen", str(port), "--api-token", TOKEN,
                 "--har", str(har)) as running:
        wait_listening(url)
        both(3)
        # 401 without the token; the status with it.
        assert requests.get(f"{url}/status", timeout=TIMEOUT).status_code == 401
        status = requests.get(f"{url}/status", headers=AUTH, timeout=TIMEOUT).json()
        assert status["module"] == "tls" and status["state"] == "running"
        assert status["probes_attached"] > 0 and status["libraries"]
        assert any(library["path"].endswith("libssl.so.3") for library in status["libraries"])
        assert status["counters"]["exchanges"] >= 6

        # A malformed and an invalid config: 400, and the capture goes on untouched.
        malformed = requests.post(f"{url}/config", data=b'{"module": "tls", "pid": ',
                                  headers=AUTH, timeout=TIMEOUT)
        assert malformed.status_code == 400 and "malformed JSON" in malformed.json()["error"]
        invalid = requests.post(f"{url}/config", json={"module": "tls", "pid": -1},
                                headers=AUTH, timeout=TIMEOUT)
        assert invalid.status_code == 400
        assert "-p/--pid must be >= 0, got -1" in invalid.json()["error"]
        both(2)

        # A config whose start fails: an error, and the previous one runs again.
        missing = tmp_path / "missing" / "libssl.so.3"
        failed = requests.post(f"{url}/tls", json={"libssl": str(missing)}, headers=AUTH,
                               timeout=TIMEOUT)
        assert failed.status_code == 422, failed.text
        answer = failed.json()
        assert f"--libssl {missing}: no such file" in answer["error"]
        assert answer["restored"] and answer["status"]["config"]["libssl"] is None
        both(2)

        # Narrow -p to the kept client: answered once the new module runs.
        narrowed = requests.post(f"{url}/config", json={"module": "tls", "pid": kept.pid},
                                 headers=AUTH, timeout=TIMEOUT)
        assert narrowed.status_code == 200, narrowed.text
        after = narrowed.json()
        assert after["config"]["pid"] == kept.pid and after["state"] == "running"
        assert after["reloads"] == 2 and after["last_reload"]["succeeded"]
        switch_at = next(rounds)
        kept.fetch(switch_at)
        other.fetch(switch_at)
        for number in rounds:
            if number > switch_at + 3:
                break
            kept.fetch(number)
            other.fetch(number)
        final = requests.get(f"{url}/status", headers=AUTH, timeout=TIMEOUT).json()
    result = running.finished()
    assert result.exit_code == 0, result.stderr
    # One file: read_events parsed every line as one JSON object.
    kept_paths = http_paths(result.events, kept.pid)
    other_paths = http_paths(result.events, other.pid)
    assert kept_paths == [f"/echo/kept-{n}" for n in kept.fetched]  # every one, once, in order
    assert other_paths == [f"/echo/other-{n}" for n in other.fetched if n < switch_at]
    # After the reload only the kept client is captured (nginx's side, others' traffic: not).
    switched_ns = next(event["ts"] for event in result.events if event["type"] == "http"
                       and event["path"] == f"/echo/kept-{switch_at}")
    assert {event["pid"] for event in result.events
            if event["type"] == "data" and event["ts"] > switched_ns} <= {kept.pid}
    # Counters went on across the reloads.
    assert final["counters"]["exchanges"] >= status["counters"]["exchanges"] + 4
    # The HAR is one document holding both modules' exchanges.
    entries = json.loads(har.read_text())["log"]["entries"]
    urls = [entry["request"]["url"] for entry in entries]
    for number in kept.fetched:
        assert any(u.endswith(f"/echo/kept-{number}") for u in urls), number
    assert not any(u.endswith(f"/echo/other-{switch_at}") for u in urls)
    assert "capture summary over 2 reloads" in result.stderr


def test_curl_while_the_event_stream_is_read(
    ecapture: Ecapture, nginx: Server, tmp_path: Path,
) -> None:
    """GET /events with a filter while curl runs: the http event of curl's request."""
    import asyncio

    import aiohttp

    port = free_port()
    url = f"http://127.0.0.1:{port}"

    async def read_one(marker: str) -> dict[str, Any]:
        async with aiohttp.ClientSession() as session, session.ws_connect(
                f"ws://127.0.0.1:{port}/events?type=http&module=tls") as socket:
            curl = await asyncio.create_subprocess_exec(
                "curl", "-sk", "-o", "/dev/null", nginx.url(f"/echo/{marker}"))
            await curl.wait()
            async with asyncio.timeout(20):
                while True:
                    message = await socket.receive()
                    event = json.loads(message.data)
                    assert event["type"] == "http"
                    if event["comm"] == "curl" and event["path"] == f"/echo/{marker}":
                        return event

    with capture(ecapture, tmp_path, "--listen", str(port)) as running:
        wait_listening(url)
        event = asyncio.run(read_one("streamed-1"))
    assert event["status"] == 200 and event["response"]["body"] == "echo:/echo/streamed-1\n"
    written = [e for e in running.finished().events if e["type"] == "http"
               and e["comm"] == "curl" and e["path"] == "/echo/streamed-1"]
    assert written == [event]  # the same object as the file's
