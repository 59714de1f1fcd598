"""A fake capture module (no BPF, no root) with the lifecycle the controller drives.

Its records are numbers; its processor turns each into an HTTP exchange whose
path is /LABEL/N and holds the newest one back until the next record or the
flush (like a response still in flight), so "no event already read is lost"
is checked across every stop.
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ecapture.cli import ArgumentParser
from ecapture.config import GlobalConfig, OutputFormat
from ecapture.errors import LibraryNotFound
from ecapture.events import Clock, Endpoint
from ecapture.output.base import Writer
from ecapture.pipeline import Pipeline, PipelineCounters
from ecapture.processor.model import ConnectionInfo, HttpExchange, HttpRequest, HttpResponse

TS = 1_700_000_000_123_456_789

BODY = b"b" * 40  # cut by -t 10: every exchange counts one cut


@dataclass(frozen=True, slots=True, kw_only=True)
class FakeConfig(GlobalConfig):
    label: str = "a"
    fail_start: bool = False


class HoldLast:
    """Record N → exchange /LABEL/N, handed over one record late (flush: the last)."""

    def __init__(self, label: str, pid: int) -> None:
        self.label, self.pid = label, pid
        self.held: HttpExchange | None = None

    def _exchange(self, number: int) -> HttpExchange:
        return HttpExchange(
            connection=ConnectionInfo(
                pid=self.pid or 4242, comm="curl", uid=0, fd=5, conn_id=7,
                client=Endpoint("127.0.0.1", 50000), server=Endpoint("127.0.0.1", 8443)),
            started_ns=TS + number, finished_ns=TS + number + 1000,
            request=HttpRequest(method="GET", target=f"/{self.label}/{number}",
                                authority="example.test", scheme=None, version="HTTP/1.1",
                                headers=((b"Host", b"example.test"),), body=b""),
            response=HttpResponse(status=200, reason="OK", version="HTTP/1.1",
                                  headers=((b"Content-Length", b"40"),), body=BODY))

    def feed(self, record: object) -> Sequence[object]:
        assert isinstance(record, int)
        out = [] if self.held is None else [self.held]
        self.held = self._exchange(record)
        return out

    def expire(self, now_ns: int) -> Sequence[object]:
        return ()

    def flush(self) -> Sequence[object]:
        out = [] if self.held is None else [self.held]
        self.held = None
        return out


class FakeModule:
    """What the controller uses of a Module, with a log of the calls."""

    name = "fake"
    instances: list[FakeModule] = []  # noqa: RUF012 (every one built, in order)
    calls: list[str] = []  # noqa: RUF012
    # The records each instance may produce before it waits for stop (None: no bound).
    budget: int | None = None

    def __init__(self, config: GlobalConfig) -> None:
        assert isinstance(config, FakeConfig)
        self.config = config
        self.links_attached = 0
        self._stop = threading.Event()
        self._pipeline: Pipeline | None = None
        self.closed = 0
        self.produced = 0
        self.started = False
        FakeModule.instances.append(self)

    def _log(self, what: str) -> None:
        FakeModule.calls.append(f"{what} {self.config.label}#{FakeModule.instances.index(self)}")

    @property
    def counters(self) -> PipelineCounters | None:
        return None if self._pipeline is None else self._pipeline.counters

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def attach_steps(self) -> Sequence[Any]:
        return ()

    def init(self, writers: Sequence[Writer]) -> None:
        self._log("init")
        self._pipeline = Pipeline(writers, processor=HoldLast(self.config.label, self.config.pid),
                                  decoder=lambda raw, clock: raw, clock=Clock())

    def start(self) -> None:
        self._log("start")
        if self.config.fail_start:
            raise LibraryNotFound("--libssl /missing/libssl.so: no such file")
        self.started = True

    def run(self) -> None:
        self._log("run")
        assert self._pipeline is not None and self.started
        while not self._stop.wait(0.001):
            if self.budget is not None and self.produced >= self.budget:
                continue
            self._pipeline.handle_batch([self.produced])  # type: ignore[list-item]
            self.produced += 1

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self.closed += 1
        if self.closed > 1:
            return
        self._log("close")
        if self._pipeline is not None:
            self._pipeline.finish()


class OtherModule(FakeModule):
    name = "other"


def fake_parser() -> ArgumentParser:
    """`fake` and `other` subcommands with a few flags of each kind."""
    parser = ArgumentParser(prog="ecapture")
    commands = parser.add_subparsers(dest="command")
    for name in ("fake", "other"):
        sub = commands.add_parser(name)
        sub.add_argument("-p", "--pid", type=int, default=0)
        sub.add_argument("--label", default="a")
        sub.add_argument("--fail-start", action="store_true")
        sub.add_argument("--format", default="json", choices=["text", "json"])
        sub.add_argument("--har", default=None)
        sub.add_argument("--tsize", type=int, default=0)
    return parser


def fake_parse(parser: argparse.ArgumentParser, common: dict[str, Any]) -> Any:
    def parse(argv: Sequence[str]) -> tuple[type[FakeModule], FakeConfig]:
        args = parser.parse_args(list(argv))
        cls = FakeModule if args.command == "fake" else OtherModule
        return cls, FakeConfig(
            **{**common, "pid": args.pid, "output_format": OutputFormat(args.format),
               "har_file": args.har, "tsize": args.tsize},
            label=args.label, fail_start=args.fail_start)
    return parse


def config(tmp_path: Path, **fields: Any) -> FakeConfig:
    """A FakeConfig writing JSON lines and a HAR into tmp_path."""
    values: dict[str, Any] = {"eventaddr": str(tmp_path / "events.jsonl"),
                              "output_format": OutputFormat.JSON,
                              "har_file": str(tmp_path / "flows.har"), "tsize": 10}
    values.update(fields)
    return FakeConfig(**values)
