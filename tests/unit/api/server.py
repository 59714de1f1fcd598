"""A controller of fake modules with its API, in a thread, for a real HTTP client."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ecapture.api.controller import Controller
from ecapture.api.server import ApiServer
from ecapture.config import OutputFormat

from .fakes import FakeConfig, FakeModule, fake_parse, fake_parser


@dataclass
class RunningApi:
    url: str
    controller: Controller
    loop: asyncio.AbstractEventLoop
    events_path: Path


@contextlib.contextmanager
def api_server(tmp_path: Path, token: str | None = None) -> Iterator[RunningApi]:
    parser = fake_parser()
    common: dict[str, Any] = {"eventaddr": str(tmp_path / "events.jsonl"),
                              "output_format": OutputFormat.JSON}
    config = FakeConfig(**common, label="a")
    controller = Controller(FakeModule, config, signals=False)
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def serve(running: Controller) -> ApiServer:
        api = await ApiServer(running, parser, fake_parse(parser, common), host="127.0.0.1",
                              port=0, token=token).start()
        holder["port"], holder["loop"] = api.port, asyncio.get_running_loop()
        ready.set()
        return api

    def main() -> None:
        try:
            holder["exit"] = asyncio.run(controller.run(serve))
        except BaseException as error:
            holder["error"] = error
            ready.set()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    assert ready.wait(10), "the API did not start"
    if "error" in holder:
        raise holder["error"]
    try:
        yield RunningApi(f"http://127.0.0.1:{holder['port']}", controller, holder["loop"],
                         tmp_path / "events.jsonl")
    finally:
        holder["loop"].call_soon_threadsafe(controller.signal_stop, signal.SIGINT)
        thread.join(15)
        assert not thread.is_alive(), "the controller did not stop"
        if "error" in holder:
            raise holder["error"]
