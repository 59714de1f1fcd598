from __future__ import annotations

import pytest


class MemorySink:
    """A Sink that keeps what it was given, and counts flushes."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.flushes = 0
        self.closed = False

    def write(self, data: bytes) -> None:
        self.data += data

    def flush(self) -> None:
        self.flushes += 1

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def sink() -> MemorySink:
    return MemorySink()
