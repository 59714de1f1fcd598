"""What outlives a module: the events sink, the writers, and the event tap.

The controller opens these once; each module it starts gets *lent* writers
(`Output.lend`): writing goes straight through, `close()` is a no-op, and
`cut` counts only what -t/--tsize cut while that module ran, so the cut
summary each module reports at its close is never reported twice. The real
writers are closed once, at the very end: one HAR document, one stream.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from ecapture.config import GlobalConfig
from ecapture.output import Sink, Writer, make_writers
from ecapture.output.base import CutCount
from ecapture.output.jsonl import JsonLinesWriter
from ecapture.output.sinks import open_sink

# Events a WebSocket client may be behind by before it misses some.
SUBSCRIBER_QUEUE_EVENTS = 2048


class LentWriter:
    """A writer as one module sees it: the controller's writer, minus close()."""

    def __init__(self, writer: Writer, module: str) -> None:
        self._writer = writer
        self._cut_at_lease = (writer.cut.records, writer.cut.bytes)
        # Bound once: the pipeline's hot path calls these per record.
        self.write: Callable[[object], None] = writer.write
        self.flush: Callable[[], None] = writer.flush
        if hasattr(writer, "module"):
            writer.module = module  # events name the module that captured them

    @property
    def writer(self) -> Writer:
        """The controller's writer behind this lease."""
        return self._writer

    @property
    def cut(self) -> CutCount:
        """What -t cut since this module got the writer."""
        records, nbytes = self._cut_at_lease
        return CutCount(self._writer.cut.records - records, self._writer.cut.bytes - nbytes)

    @cut.setter
    def cut(self, value: CutCount) -> None:  # the Writer protocol declares it settable
        raise AttributeError("a lent writer's cut count is derived from its writer")

    def close(self) -> None:
        """The controller closes the real writer once, after the last module."""


@dataclass(slots=True)
class EventFilter:
    """A WebSocket client's filter: each given field must match."""

    module: str | None = None
    pid: int | None = None
    types: frozenset[str] = frozenset()

    def matches(self, event: dict[str, Any]) -> bool:
        if self.types and event.get("type") not in self.types:
            return False
        if self.module is not None and event.get("module") != self.module:
            return False
        return self.pid is None or event.get("pid") == self.pid


@dataclass(slots=True)
class Subscriber:
    """One client's bounded queue of encoded events. The capture thread
    appends and never waits; what does not fit is counted and told to the
    client as a `lost` event (reason queue_full) once it has room again."""

    filter: EventFilter
    wake: Callable[[], None]  # thread-safe: tells the client's task there is more
    limit: int = SUBSCRIBER_QUEUE_EVENTS
    queue: deque[bytes] = field(default_factory=deque)
    missed_records: int = 0
    missed_bytes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def offer(self, line: bytes, event: dict[str, Any]) -> bool:
        """Queue one event if it passes the filter; False when it did not fit."""
        if not self.filter.matches(event):
            return True
        with self.lock:
            if len(self.queue) >= self.limit:
                self.missed_records += 1
                self.missed_bytes += len(line)
                return False
            self.queue.append(line)
        return True

    def take(self, module: str, now_ns: int) -> list[bytes]:
        """Everything queued, after a `lost` event for what was missed before it."""
        with self.lock:
            lines = list(self.queue)
            self.queue.clear()
            missed, nbytes = self.missed_records, self.missed_bytes
            self.missed_records = self.missed_bytes = 0
        if missed:
            lost = {"type": "lost", "module": module, "ts": now_ns, "pid": None, "tid": None,
                    "comm": None, "uid": None, "reason": "queue_full", "records": missed,
                    "bytes": nbytes, "conn_id": None, "fd": None}
            lines.insert(0, msgspec.json.encode(lost))
        return lines


class _TapSink:
    """The tap writer's sink: each flushed batch of JSON lines goes to the
    subscribers' queues (never blocking: a full queue counts a miss)."""

    def __init__(self, tap: EventTap) -> None:
        self._tap = tap
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        self._pending.append(bytes(data))

    def flush(self) -> None:
        if not self._pending:
            return
        chunk = b"".join(self._pending)
        self._pending.clear()
        self._tap.publish(chunk.splitlines())

    def close(self) -> None:
        self.flush()


class EventTap:
    """A JSON writer (the objects of --format json) whose lines go to the
    WebSocket clients; it encodes nothing while no client listens."""

    def __init__(self, module: str) -> None:
        self.module = module
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()
        self._json = JsonLinesWriter(module, _TapSink(self))
        self.cut = self._json.cut  # tsize 0: never cuts

    def subscribe(self, subscriber: Subscriber) -> None:
        with self._lock:
            self._subscribers = [*self._subscribers, subscriber]

    def unsubscribe(self, subscriber: Subscriber) -> None:
        with self._lock:
            self._subscribers = [s for s in self._subscribers if s is not subscriber]

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def write(self, item: object) -> None:
        if self._subscribers:
            self._json.module = self.module
            self._json.write(item)

    def flush(self) -> None:
        self._json.flush()

    def close(self) -> None:
        self._json.close()

    def publish(self, lines: Sequence[bytes]) -> None:
        subscribers = self._subscribers
        if not subscribers:
            return
        decoded = [(line, msgspec.json.decode(line)) for line in lines if line]
        for subscriber in subscribers:
            for line, event in decoded:
                subscriber.offer(line, event)
            subscriber.wake()


class Output:
    """The sink and writers of a whole capture, whatever modules come and go."""

    def __init__(self, config: GlobalConfig, module: str) -> None:
        self.sink: Sink = open_sink(config.eventaddr)
        try:
            self.writers: list[Writer] = make_writers(config, module, self.sink)
        except BaseException:
            self.sink.close()
            raise
        self.tap = EventTap(module)
        self._closed = False

    def lend(self, module: str) -> list[Writer]:
        """The writers for one module (the event stream first: it counts the cuts)."""
        self.tap.module = module
        return [*(LentWriter(writer, module) for writer in self.writers), self.tap]

    def close(self) -> None:
        """Close every writer (HAR writes its document), then the sink; once."""
        if self._closed:
            return
        self._closed = True
        first: BaseException | None = None
        for closing in (*self.writers, self.tap, self.sink):
            try:
                closing.close()
            except BaseException as error:  # every writer still closes; the first error wins
                first = first or error
        if first is not None:
            raise first
