"""The two output interfaces: a Writer formats items, a Sink delivers bytes.

A writer is told each item once, `flush()` once per reader batch and
`close()` once at the end (HAR writes its whole document there). Writers
never close the sink they were given: whoever opened it closes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ecapture.events import ConnClose, Lost, TlsData
from ecapture.processor.model import HttpExchange, Unparsed

OutputItem = TlsData | ConnClose | Lost | HttpExchange | Unparsed


@dataclass(slots=True)
class CutCount:
    """What -t/--tsize kept out of the output: the caller sums it at exit
    and reports it as a `Lost` with reason TSIZE."""

    records: int = 0
    bytes: int = 0

    def add(self, cut_bytes: int) -> None:
        self.records += 1
        self.bytes += cut_bytes


class Writer(Protocol):
    cut: CutCount

    def write(self, item: OutputItem) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class Sink(Protocol):
    def write(self, data: bytes) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...
